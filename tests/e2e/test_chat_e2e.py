"""Acceptance 1 of the chat issue, end to end over HTTP in each push mode: a staff member bills a
bound customer in chat, the customer gets the bill notice, and their 账单 lists a pay link that opens."""

from __future__ import annotations

import pytest
import requests

from erp_sync import relay_for
from payments.models import BillStatus, StaffRole
from sandbox import push_client as pc
from tests.fixtures.chat import Chat, wait_for


@pytest.mark.parametrize("mode", pc.MODES)
def test_staff_bills_a_customer_who_then_sees_the_bill_and_a_working_pay_link(chat: Chat, mode: str) -> None:
    chat.mode = mode
    sales = chat.staff(StaffRole.sales)
    customer = chat.customer(sales, "张三 13800138000")

    preview = chat.text(sales, "开单 张三 3.8万 首期款")
    assert "请核对账单" in preview and "¥38,000.00" in preview and "叁万捌仟元整" in preview
    [draft] = chat.bills()
    assert draft.status is BillStatus.draft

    confirmed = chat.text(sales, "确认")
    assert f"已开单 {draft.number}" in confirmed and "客户已关注公众号" in confirmed
    [bill] = chat.bills()
    assert bill.status is BillStatus.open

    relay_for(chat.live.app).drain(max_seconds=10)
    [notice] = wait_for(lambda: chat.live.wx.template_messages_for(customer), what="bill notice")
    assert notice["data"]["character_string1"]["value"] == bill.number
    assert notice["data"]["amount2"]["value"] == "38000.00元"

    listing = chat.say(customer, "账单")
    assert listing.reply is not None and listing.reply["MsgType"] == "news"
    article = listing.reply["Articles"]["item"]
    assert bill.number in article["Title"] and "¥38,000.00" in article["Title"]
    page = requests.get(article["Url"], timeout=10)
    assert page.status_code == 200 and bill.number in page.text
    # Both links open the same bill (tokens carry their signing time, so compare what they open).
    notice_page = requests.get(notice["url"], timeout=10)
    assert notice_page.status_code == 200 and bill.number in notice_page.text
    assert article["Url"].rsplit("/", 1)[0] == notice["url"].rsplit("/", 1)[0]
