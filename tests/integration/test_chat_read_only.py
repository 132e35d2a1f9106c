"""Read-only customer commands skip the dedup row: a retry recomputes the same answer, nothing is written
except the 48-hour window marker when it has gone stale; commands with effects keep exactly-once."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select, update

from bot.models import ReceivedPush
from db import utcnow
from handlers.models import AuditEntry
from handlers.router import WINDOW_REFRESH
from payments.models import Customer, StaffRole
from sandbox import push_client as pc
from tests.fixtures.chat import Chat


def _pushes_from(chat: Chat, openid: str) -> int:
    with chat.live.db.transaction() as s:
        count = select(func.count()).select_from(ReceivedPush).where(ReceivedPush.openid == openid)
        return int(s.scalar(count) or 0)


def _set_last_message(chat: Chat, openid: str, at: dt.datetime | None) -> None:
    with chat.live.db.transaction() as s:
        s.execute(update(Customer).where(Customer.openid == openid).values(last_message_at=at))


def test_a_retried_bill_list_gets_the_same_bills_and_stores_no_push(chat: Chat) -> None:
    sales = chat.staff(StaffRole.sales)
    customer = chat.customer(sales)
    chat.text(sales, "开单 张三 13800138000 38000 首期款")
    chat.text(sales, "确认")
    [bill] = chat.bills()
    before = _pushes_from(chat, customer)
    message = pc.text_message(chat.live.creds.original_id, customer, "我的账单")

    first, retry = chat.live.push(message), chat.live.push(message)

    titles = [r.reply["Articles"]["item"]["Title"] for r in (first, retry)]
    assert titles[0] == titles[1] and bill.number in titles[0]
    assert _pushes_from(chat, customer) == before


def test_the_window_marker_is_rewritten_only_once_it_is_stale(chat: Chat) -> None:
    sales = chat.staff(StaffRole.sales)
    customer = chat.customer(sales)
    fresh = utcnow() - WINDOW_REFRESH / 2
    _set_last_message(chat, customer, fresh)
    chat.text(customer, "帮助")
    found = chat.customer_by_openid(customer)
    assert found is not None and found.last_message_at == fresh

    stale = utcnow() - WINDOW_REFRESH * 2
    _set_last_message(chat, customer, stale)
    chat.text(customer, "帮助")
    found = chat.customer_by_openid(customer)
    assert found is not None and found.last_message_at is not None and found.last_message_at > stale


def test_staff_lookups_still_take_the_audited_exactly_once_path(chat: Chat) -> None:
    sales = chat.staff(StaffRole.sales)
    chat.text(sales, "开单 张三 13800138000 38000 首期款")
    chat.text(sales, "确认")
    [bill] = chat.bills()
    before = _pushes_from(chat, sales)

    assert bill.number in chat.text(sales, f"账单 {bill.number}")

    assert _pushes_from(chat, sales) == before + 1
    with chat.live.db.transaction() as s:
        commands = list(s.execute(select(AuditEntry.command).where(AuditEntry.openid == sales)).scalars())
    assert commands[-1] == "show"


def _issue(chat: Chat, staff: str, command: str) -> str:
    chat.text(staff, command)
    chat.text(staff, "确认")
    return chat.bills()[-1].number


def _listed(chat: Chat, openid: str) -> list[str]:
    reply = chat.say(openid, "我的账单").reply
    assert reply is not None and reply["MsgType"] == "news", reply
    items = reply["Articles"]["item"]
    return [item["Title"] for item in (items if isinstance(items, list) else [items])]


def test_the_bill_list_shows_only_the_senders_open_bills_in_issue_order_and_follows_payments(
    chat: Chat,
) -> None:
    sales, finance = chat.staff(StaffRole.sales), chat.staff(StaffRole.finance, "王会计")
    customer = chat.customer(sales)
    first = _issue(chat, sales, "开单 张三 13800138000 38000 首期款")
    voided = _issue(chat, sales, "开单 张三 13800138000 1000 增项")
    paid = _issue(chat, sales, "开单 张三 13800138000 500 定金")
    last = _issue(chat, sales, "开单 张三 13800138000 20000 中期款")
    someone_else = _issue(chat, sales, "开单 李四 13900000000 3000 尾款")
    assert "已作废" in chat.text(sales, f"作废 {voided} 写错了")
    chat.text(finance, f"收款 {paid} 500 现金")

    titles = _listed(chat, customer)

    assert [t.split()[0] for t in titles] == [first, last]
    assert not any(n in " ".join(titles) for n in (voided, paid, someone_else))
    assert "待付 ¥38,000.00" in titles[0]
    chat.text(finance, f"收款 {first} 8000 转账")
    assert "待付 ¥30,000.00" in _listed(chat, customer)[0]  # the same day's list follows the payment
