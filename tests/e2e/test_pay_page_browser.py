"""The pay page in a real browser (Playwright + the system Chromium): inside WeChat through OAuth to a
stubbed WeixinJSBridge whose paySign must verify with the merchant public key; outside WeChat the QR.
Screenshots are kept in test-artifacts/ (git-ignored)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import zxingcpp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from PIL import Image
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select

from payments.models import Bill, BillStatus
from tests.fixtures.browser import ARTIFACTS, PHONE, screenshot
from tests.fixtures.payments import PayBench
from tests.integration.test_pay_page import WECHAT_UA

pytestmark = pytest.mark.browser


# A WeChat in-app browser's bridge, reduced to what the page uses; the test plays WeChat's part.
BRIDGE_STUB = """
window.__bridgeCalls = [];
window.WeixinJSBridge = {
  invoke: function (name, params, callback) {
    window.__bridgeCalls.push({ name: name, params: params });
    window.__bridgeCallback = callback;
  }
};
"""


def shot(page: Page, name: str) -> None:
    screenshot(page, f"pay-{name}", full_page=True)


def bill_status(bench: PayBench, number: str) -> BillStatus:
    with bench.db.transaction() as s:
        return s.execute(select(Bill.status).where(Bill.number == number)).scalar_one()


def verify_pay_sign(bench: PayBench, params: dict[str, Any]) -> None:
    message = f"{params['appId']}\n{params['timeStamp']}\n{params['nonceStr']}\n{params['package']}\n"
    key = serialization.load_pem_public_key(bench.credentials.merchant_public_key_file.read_bytes())
    key.verify(base64.b64decode(params["paySign"]), message.encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr, call-arg]


def bridge_call(page: Page, count: int) -> dict[str, Any]:
    page.wait_for_function(f"window.__bridgeCalls.length >= {count}")
    call: dict[str, Any] = page.evaluate(f"window.__bridgeCalls[{count - 1}]")
    assert call["name"] == "getBrandWCPayRequest"
    return dict(call["params"])


def test_inside_wechat_the_page_pays_through_oauth_and_the_bridge(
    browser: Browser, paybench: PayBench
) -> None:
    number = paybench.issue_bill(3_800_000)
    context = browser.new_context(user_agent=WECHAT_UA, viewport=PHONE, locale="zh-CN")
    context.add_cookies(
        [{"name": "sandbox_openid", "value": "o_browser_customer", "url": paybench.wechat_api_url}]
    )
    context.add_init_script(BRIDGE_STUB)
    page = context.new_page()

    page.goto(paybench.pay_url(number))  # → OAuth at the stand-in → back with the openid

    expect(page.get_by_text("待付金额", exact=True)).to_be_visible()
    expect(page.locator("#outstanding-text")).to_have_text("¥38,000.00")
    shot(page, "1-wechat-bill")
    page.get_by_role("button", name="支付", exact=True).click()
    params = bridge_call(page, 1)
    verify_pay_sign(paybench, params)
    page.evaluate("window.__bridgeCallback({err_msg: 'get_brand_wcpay_request:cancel'})")
    expect(page.get_by_role("button", name="重新支付")).to_be_visible()
    shot(page, "2-wechat-cancelled")

    page.get_by_role("button", name="重新支付").click()
    params = bridge_call(page, 2)
    verify_pay_sign(paybench, params)
    order = next(
        o for o in paybench.pay.orders() if o.get("prepay_id") == params["package"][len("prepay_id=") :]
    )
    assert order["openid"] == "o_browser_customer"
    paybench.pay.pay(order["out_trade_no"])
    page.evaluate("window.__bridgeCallback({err_msg: 'get_brand_wcpay_request:ok'})")

    expect(page.get_by_text("支付成功")).to_be_visible(timeout=10_000)
    expect(page.locator("#status-label")).to_have_text("已付清")
    shot(page, "3-wechat-paid")
    assert bill_status(paybench, number) is BillStatus.paid
    context.close()


def test_outside_wechat_the_page_shows_a_qr_of_the_code_url_and_confirms(
    browser: Browser, paybench: PayBench
) -> None:
    number = paybench.issue_bill(3_800_000)
    context = browser.new_context(viewport=PHONE, locale="zh-CN")
    page = context.new_page()

    page.goto(paybench.pay_url(number) + "?amount=10000")

    qr = page.locator("#qr")
    expect(qr).to_be_visible()
    page.wait_for_function("document.getElementById('qr').naturalWidth > 0")
    shot(page, "4-native-qr")
    ARTIFACTS.mkdir(exist_ok=True)
    qr.screenshot(path=str(ARTIFACTS / "pay-4-native-qr-only.png"))
    decoded = [r.text for r in zxingcpp.read_barcodes(Image.open(ARTIFACTS / "pay-4-native-qr-only.png"))]
    (order,) = paybench.pay.orders()
    assert decoded == [order["code_url"]] and order["total"] == 1_000_000

    paybench.pay.pay(order["out_trade_no"])

    expect(page.get_by_text("支付成功")).to_be_visible(timeout=10_000)
    expect(page.locator("#outstanding-text")).to_have_text("¥28,000.00")
    shot(page, "5-native-paid")
    assert bill_status(paybench, number) is BillStatus.partially_paid
    context.close()
