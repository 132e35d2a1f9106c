"""Acceptance 3: the authorization matrix, table-driven, over HTTP. A customer sees and pays only their
own bills; a non-staff user's staff command reads like an unknown command (and is audited); sales
cannot record offline payments."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy import select

from handlers.models import AuditEntry
from handlers.router import UNKNOWN
from payments.errors import BillNotFound
from payments.models import Bill, Customer, StaffRole
from tests.fixtures.chat import Chat, new_openid

NOT_FOUND = BillNotFound.default_message


@dataclass(frozen=True)
class Row:
    actor: str  # alice | bob | stranger | sales | finance
    command: str  # {alice_bill} / {bob_bill} are filled in
    expect: str  # a fragment of the reply
    audited_as: str | None = None  # the audit outcome, when the attempt must be audited
    changes_bill: bool = False


MATRIX = [
    Row("alice", "支付 {bob_bill}", NOT_FOUND),
    Row("alice", "收据 {bob_bill}", NOT_FOUND),
    Row("alice", "支付 B2611-9999", NOT_FOUND),  # exactly like someone else's bill
    Row("alice", "支付 {alice_bill}", "{alice_bill}"),
    Row("alice", "未付", UNKNOWN, "denied"),
    Row("alice", "作废 {bob_bill} 不想付", UNKNOWN, "denied"),
    Row("alice", "收款 {alice_bill} 100 现金", UNKNOWN, "denied"),
    Row("stranger", "开单 张三 100 首期款", UNKNOWN, "denied"),
    Row("stranger", "今日", UNKNOWN, "denied"),
    Row("stranger", "账单 {alice_bill}", "还没有绑定客户资料"),
    Row("stranger", "支付 {alice_bill}", NOT_FOUND),
    Row("sales", "收款 {alice_bill} 100 现金", "不能使用“收款”", "denied"),
    Row("sales", "作废 {alice_bill} 写错了", "已作废", "ok", changes_bill=True),
    Row("finance", "收款 {alice_bill} 100 现金", "已登记现金收款", "ok", changes_bill=True),
]


@pytest.fixture
def world(chat: Chat) -> dict[str, str]:
    actors = {"sales": chat.staff(StaffRole.sales), "finance": chat.staff(StaffRole.finance, "王会计"),
              "alice": new_openid("o_alice"), "bob": new_openid("o_bob"), "stranger": new_openid("o_x")}
    numbers = {}
    for who, phone in (("alice", "13800000001"), ("bob", "13800000002")):
        chat.text(actors["sales"], f"开单 {who} {phone} 1000 首期款")
        chat.text(actors["sales"], "确认")
        with chat.live.db.transaction() as s:
            customer = s.execute(select(Customer).where(Customer.phone == phone)).scalar_one()
            customer.openid = actors[who]
            query = select(Bill.number).where(Bill.customer_id == customer.id)
            numbers[f"{who}_bill"] = s.execute(query).scalar_one()
    return {**actors, **numbers}


def _last_audit_id(chat: Chat) -> int:
    with chat.live.db.transaction() as s:
        return s.execute(select(AuditEntry.id).order_by(AuditEntry.id.desc()).limit(1)).scalar() or 0


def _bill_state(chat: Chat) -> list[tuple]:
    return [(b.number, str(b.status), b.paid_fen, b.seq) for b in chat.bills()]


@pytest.mark.parametrize("row", MATRIX, ids=[f"{r.actor}:{r.command}" for r in MATRIX])
def test_authorization_matrix(chat: Chat, world: dict[str, str], row: Row) -> None:
    before, last_audit = _bill_state(chat), _last_audit_id(chat)
    reply = chat.say(world[row.actor], row.command.format(**world)).reply
    assert reply is not None
    shown = reply.get("Content") or str(reply.get("Articles"))
    assert row.expect.format(**world) in shown
    assert (_bill_state(chat) != before) is row.changes_bill
    with chat.live.db.transaction() as s:
        outcomes = list(s.execute(select(AuditEntry.outcome).where(AuditEntry.openid == world[row.actor])
                                  .where(AuditEntry.id > last_audit)).scalars())
    assert outcomes == ([row.audited_as] if row.audited_as else [])


def test_a_staff_command_from_a_stranger_reads_exactly_like_gibberish(chat: Chat) -> None:
    stranger = new_openid()
    assert chat.text(stranger, "作废 B2611-0001 测试") == chat.text(stranger, "qwertyuiop")
