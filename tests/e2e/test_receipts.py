"""The receipt page over HTTP and in a browser (phone and A5 print), amounts in Chinese capitals, refunds
against the receipt, and ``收据 <编号>`` in chat. Screenshots go to test-artifacts/ (git-ignored)."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import zxingcpp
from PIL import Image
from playwright.sync_api import Browser

from payments import services
from payments.models import RefundStatus
from payments.money import chinese_capital
from tests.fixtures.browser import ARTIFACTS
from tests.fixtures.notices import Shop


@pytest.mark.parametrize(("fen", "capital"), [
    (5, "伍分"),
    (1_000, "壹拾元整"),
    (10_100, "壹佰零壹元整"),
    (100_010, "壹仟元零壹角"),
    (3_800_000, "叁万捌仟元整"),
    (1_000_000, "壹万元整"),
    (10_000_000_000, "壹亿元整"),
    (10_005_000_001, "壹亿零伍万元零壹分"),
    (123_456_789, "壹佰贰拾叁万肆仟伍佰陆拾柒元捌角玖分"),
])
def test_receipt_amounts_read_in_chinese_capitals(fen: int, capital: str) -> None:
    assert chinese_capital(fen) == capital


def _page(shop: Shop, receipt_no: str) -> requests.Response:
    return requests.get(shop.links.receipt_url(receipt_no), timeout=10)


def test_the_receipt_page_shows_the_payment_in_figures_capitals_and_a_verifiable_qr(shop: Shop) -> None:
    number = shop.bill(3_800_000)
    payment = shop.pay(number)
    page = _page(shop, payment.receipt_no)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "private, no-store"
    text = page.text
    for expected in (payment.receipt_no, "张三", number, "HT-2026-118", "首期款", "水电改造 首期款",
                     "¥38,000.00", "人民币叁万捌仟元整", "微信支付", str(payment.transaction_id),
                     shop.live.settings.company_name, shop.live.settings.company_seal_text,
                     shop.links.verification_code(payment.receipt_no)):
        assert expected in text, expected
    png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', text).group(1))  # type: ignore[union-attr]
    [code] = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))
    assert shop.receipt_of(code.text) == payment.receipt_no


def test_a_partial_payment_gets_its_own_receipt_and_refunds_show_against_it(shop: Shop) -> None:
    number = shop.bill(3_800_000)
    first = shop.pay(number, 100_010)
    second = shop.pay(number, 3_699_990)
    assert first.receipt_no != second.receipt_no
    assert "人民币壹仟元零壹角" in _page(shop, first.receipt_no).text
    with shop.live.db.transaction() as s:
        bill = services.get_bill_by_number(s, number)
        [refund] = services.request_refund(s, bill_id=bill.id, amount_fen=10, reason="多收零头",
                                           request_no="RF-1", source="erp")
        out_refund_no = refund.out_refund_no
    with shop.live.db.transaction() as s:
        services.apply_refund_result(s, out_refund_no, status=RefundStatus.succeeded, refund_id="50000001")
    refunded = _page(shop, first.receipt_no if refund.payment_id == first.id else second.receipt_no).text
    assert "退款记录" in refunded and "多收零头" in refunded and "已退款 ¥0.10" in refunded


def test_an_invalid_or_unknown_receipt_link_is_a_chinese_404(shop: Shop) -> None:
    forged = requests.get(f"{shop.live.url}/receipts/not-a-token", timeout=10)
    unknown = requests.get(shop.links.receipt_url("R2611-99999"), timeout=10)
    for answer in (forged, unknown):
        assert answer.status_code == 404 and "收据不存在" in answer.text


def test_receipt_command_answers_customers_and_staff_with_the_links(shop: Shop) -> None:
    number = shop.bill(3_800_000)
    payment = shop.pay(number)
    for openid, ref in ((shop.customer, payment.receipt_no.lower()), (shop.sales, number)):
        reply = shop.live.push_text(openid, f"收据 {ref}").reply
        assert reply is not None and payment.receipt_no in reply["Content"], reply
        link = re.search(r"https?://\S+/receipts/\S+", reply["Content"]).group(0)  # type: ignore[union-attr]
        assert shop.receipt_of(link) == payment.receipt_no
    stranger = shop.live.push_text("o_stranger_0001", f"收据 {payment.receipt_no}").reply
    assert stranger is not None and payment.receipt_no not in stranger["Content"]


@pytest.mark.browser
def test_the_receipt_looks_right_on_a_phone_and_prints_on_one_a5_page(shop: Shop, browser: Browser,
                                                                      tmp_path: Path) -> None:
    number = shop.bill(3_800_000)
    payment = shop.pay(number)
    ARTIFACTS.mkdir(exist_ok=True)
    phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    phone.goto(shop.links.receipt_url(payment.receipt_no))
    assert phone.locator(".figure td").inner_text() == "¥38,000.00"
    overflow = phone.evaluate("document.documentElement.scrollWidth > window.innerWidth")
    assert overflow is False  # nothing sticks out sideways on a 390 px phone
    phone.screenshot(path=str(ARTIFACTS / "receipt-phone.png"), full_page=True)

    pdf = tmp_path / "receipt.pdf"
    if shutil.which("pdftoppm") is None:
        pytest.fail("pdftoppm is missing: apt-get install -y poppler-utils")
    phone.pdf(path=str(pdf), format="A5", print_background=True, prefer_css_page_size=True)
    subprocess.run(["pdftoppm", "-png", "-r", "110", str(pdf), str(tmp_path / "a5")], check=True)
    pages = sorted(tmp_path.glob("a5*.png"))
    assert len(pages) == 1, "the receipt must fit on one A5 page"
    (ARTIFACTS / "receipt-a5.png").write_bytes(pages[0].read_bytes())
    with Image.open(pages[0]) as image:  # A5 portrait at 110 dpi: 148 × 210 mm
        assert abs(image.width - 641) <= 2 and abs(image.height - 909) <= 2
    phone.close()
