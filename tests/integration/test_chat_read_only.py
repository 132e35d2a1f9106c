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
