"""The sandbox walkthrough in a real browser (Playwright + the system Chromium), on RenoPay served as
`make run` serves it: the staff phone issues a bill, the customer phone receives it, pays part and
then the rest through the pay page and the WeixinJSBridge stand-in, the receipts arrive, and the ERP
panel shows the events in order. Screenshots of every step go to test-artifacts/simulator-*.png."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Browser, FrameLocator, Page, expect
from sqlalchemy import select

from payments.models import Bill, BillStatus, Payment, PaymentMethod
from sandbox import seed
from tests.e2e.test_simulator_api import Sandbox, sandbox  # noqa: F401 - the served-sandbox fixture
from tests.fixtures.browser import PHONE, screenshot

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1480, "height": 1040}
WAIT = 20_000  # ms, the longest any step may take (relay interval 2 s + notification round trips)


def shot(page: Page, name: str) -> None:
    screenshot(page, f"simulator-{name}")


def say(page: Page, role: str, text: str) -> None:
    page.get_by_test_id(f"input-{role}").fill(text)
    page.get_by_test_id(f"send-{role}").click()


def pay_in_phone(page: Page, amount: str | None, expected_sheet: str) -> FrameLocator:
    frame = page.frame_locator("[data-testid=frame-customer]")
    expect(frame.locator("#pay-button")).to_be_visible(timeout=WAIT)
    if amount is not None:
        frame.locator("#amount").fill(amount)
    frame.locator("#pay-button").click()
    sheet = page.get_by_test_id("paysheet-customer")
    expect(sheet).to_be_visible(timeout=WAIT)
    expect(sheet.locator(".paysheet-amount")).to_have_text(expected_sheet)
    return frame


def test_staff_bills_customer_pays_in_two_parts_and_the_erp_sees_every_event(
    browser: Browser, sandbox: Sandbox  # noqa: F811 - the fixture imported above
) -> None:
    page = browser.new_page(viewport=DESKTOP)
    page.goto(f"{sandbox.url}/sandbox/")
    staff_chat, customer_chat = page.get_by_test_id("chat-staff"), page.get_by_test_id("chat-customer")
    page.get_by_test_id("who-staff").select_option(seed.SALES.openid)
    expect(page.get_by_test_id("who-customer")).to_have_value(seed.ZHANG.openid)
    shot(page, "01-start")

    # 1. the staff phone issues a bill
    say(page, "staff", "开单 张三 13800138000 2万 首期款")
    expect(staff_chat).to_contain_text("请核对账单", timeout=WAIT)
    say(page, "staff", "确认")
    expect(staff_chat).to_contain_text("已开单", timeout=WAIT)
    number = re.search(r"已开单 (B\d{4}-\d{4})", staff_chat.inner_text()).group(1)  # type: ignore[union-attr]
    shot(page, "02-staff-issued")

    # 2. the customer phone receives it as a template message
    notice = customer_chat.locator(".msg.template", has_text=number)
    expect(notice).to_be_visible(timeout=WAIT)
    expect(notice).to_contain_text("待支付账单提醒")
    shot(page, "03-customer-notice")

    # 3. pays part: the pay page opens inside the phone (OAuth as 张三), WeChat Pay's sheet confirms
    notice.locator(".tpl-link").click()
    pay_in_phone(page, "5000", "¥5,000.00")
    shot(page, "04-pay-sheet")
    page.get_by_test_id("paysheet-customer").locator(".confirm").click()
    frame = page.frame_locator("[data-testid=frame-customer]")
    expect(frame.locator("[data-state=success]")).to_contain_text("支付成功", timeout=WAIT)
    expect(frame.locator("#success-detail")).to_contain_text("剩余待付 ¥15,000.00")
    shot(page, "05-paid-part")

    # 4. then the rest
    page.get_by_test_id("close-customer").click()
    notice.locator(".tpl-link").click()
    pay_in_phone(page, None, "¥15,000.00")
    page.get_by_test_id("paysheet-customer").locator(".confirm").click()
    expect(frame.locator("#success-detail")).to_contain_text("账单已付清", timeout=WAIT)
    shot(page, "06-paid-in-full")
    page.get_by_test_id("close-customer").click()

    # 5. the receipts arrive: one receipt template message per payment, and 收据 lists both
    # (the seed's paid 设计定金 bill has a receipt of its own; this bill's receipts name its stage)
    receipt_notices = customer_chat.locator(".msg.template", has_text="收款成功通知")
    receipt_notices = receipt_notices.filter(has_text="首期款")
    expect(receipt_notices).to_have_count(2, timeout=WAIT)
    expect(receipt_notices.filter(has_text="5000.00元").filter(has_not_text="15000.00元")).to_have_count(1)
    expect(receipt_notices.filter(has_text="15000.00元")).to_have_count(1)
    say(page, "customer", f"收据 {number}")
    expect(customer_chat).to_contain_text(f"账单 {number} 的收据", timeout=WAIT)
    receipts = customer_chat.locator(".msg.in", has_text=f"账单 {number} 的收据").last
    expect(receipts.locator("a.link")).to_have_count(2)
    shot(page, "07-receipts")

    # 6. the ERP panel: opened, paid, paid — in order, every signature valid
    rows = page.get_by_test_id("erp-panel").locator("tr", has_text=number)
    expect(rows).to_have_count(3, timeout=WAIT)
    cells = [rows.nth(i).locator("td").all_inner_texts() for i in range(3)]
    assert [(c[2], c[4], c[5], c[6]) for c in cells] == [
        ("bill.opened", "1", "open", "✓ 有效"),
        ("payment.succeeded", "2", "partially_paid", "✓ 有效"),
        ("payment.succeeded", "3", "paid", "✓ 有效"),
    ]
    shot(page, "08-erp-panel")
    page.get_by_role("tab", name="发件箱").click()
    expect(page.get_by_test_id("outbox-panel")).to_contain_text("payment.succeeded")
    shot(page, "09-outbox")
    page.get_by_role("tab", name="模拟服务日志").click()
    expect(page.get_by_test_id("logs-panel")).to_contain_text("TRANSACTION.SUCCESS")
    shot(page, "10-logs")

    with sandbox.db.transaction() as s:
        bill = s.execute(select(Bill).where(Bill.number == number)).scalar_one()
        payments = [(p.method, p.amount_fen, p.payer_openid) for p in s.scalars(
            select(Payment).where(Payment.bill_id == bill.id).order_by(Payment.id))]
        assert (bill.status, bill.paid_fen) == (BillStatus.paid, 2_000_000)
    assert payments == [(PaymentMethod.wechat, 500_000, seed.ZHANG.openid),
                        (PaymentMethod.wechat, 1_500_000, seed.ZHANG.openid)]

    # the same page at a phone's width
    page.set_viewport_size(PHONE)
    expect(page.get_by_test_id("phone-customer")).to_be_visible()
    shot(page, "11-phone-width")
    page.close()
