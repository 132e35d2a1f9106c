"""Every bill transition, table-driven: each allowed one works; every other one raises a domain
error with a Chinese message and changes nothing (the unit of work rolls back)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from db import utcnow
from erp_sync.outbox import OutboxEvent
from payments import services
from payments.errors import DomainError
from payments.models import Bill, BillStatus, Channel, PaymentMethod, RefundStatus
from tests.fixtures.domain import Builder

AMOUNT = 3_800_000


def _make(build: Builder, status: BillStatus) -> int:
    """Drive a fresh bill to ``status`` through the services only."""
    if status is BillStatus.draft:
        return build.bill(AMOUNT, open_now=False)
    if status is BillStatus.cancelled:
        bill_id = build.bill(AMOUNT, open_now=False)
        with build.db.transaction() as s:
            services.cancel_draft(s, bill_id)
        return bill_id
    bill_id = build.bill(AMOUNT)
    if status is BillStatus.void:
        with build.db.transaction() as s:
            services.void_bill(s, bill_id, reason="客户取消")
    elif status is BillStatus.partially_paid:
        build.pay(build.attempt(bill_id, 1_000_000), 1_000_000)
    elif status in (BillStatus.paid, BillStatus.partially_refunded, BillStatus.refunded):
        build.pay(build.attempt(bill_id), AMOUNT)
        if status is not BillStatus.paid:
            amount = 100_000 if status is BillStatus.partially_refunded else AMOUNT
            with build.db.transaction() as s:
                refunds = services.request_refund(
                    s,
                    bill_id=bill_id,
                    amount_fen=amount,
                    reason="测试",
                    request_no="RF-" + status.value,
                    source="test",
                )
                no = refunds[0].out_refund_no
            with build.db.transaction() as s:
                services.apply_refund_result(s, no, status=RefundStatus.succeeded)
    assert build.get(bill_id).status is status
    return bill_id


def _open(s, bill_id, staff_id):
    services.open_bill(s, bill_id)


def _cancel(s, bill_id, staff_id):
    services.cancel_draft(s, bill_id)


def _void(s, bill_id, staff_id):
    services.void_bill(s, bill_id, reason="录错了")


def _attempt(s, bill_id, staff_id):
    services.start_attempt(s, bill_id, channel=Channel.native, amount_fen=100)


def _offline(s, bill_id, staff_id):
    services.record_offline_payment(
        s, bill_id, amount_fen=100, method=PaymentMethod.transfer, staff_id=staff_id, note="银行转账"
    )


def _refund(s, bill_id, staff_id):
    services.request_refund(
        s, bill_id=bill_id, amount_fen=100, reason="少收", request_no="RX1", source="test"
    )


def _remind(s, bill_id, staff_id):
    services.remind_bill(s, bill_id, today=utcnow().date())


ACTIONS: dict[str, tuple[Callable, set[BillStatus]]] = {
    "open": (_open, {BillStatus.draft}),
    "cancel": (_cancel, {BillStatus.draft}),
    "void": (_void, {BillStatus.open}),
    "start_attempt": (_attempt, {BillStatus.open, BillStatus.partially_paid}),
    "offline_payment": (_offline, {BillStatus.open, BillStatus.partially_paid}),
    "refund": (_refund, {BillStatus.partially_paid, BillStatus.paid, BillStatus.partially_refunded}),
    "remind": (_remind, {BillStatus.open, BillStatus.partially_paid}),
}

CASES = [(action, status) for action in ACTIONS for status in BillStatus]


def _snapshot(build: Builder, bill_id: int) -> tuple:
    with build.db.transaction() as s:
        bill = s.get_one(Bill, bill_id)
        events = s.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.bill_id == bill_id))
        return (
            bill.status,
            bill.paid_fen,
            bill.refunded_fen,
            bill.seq,
            len(bill.attempts),
            len(bill.payments),
            len(bill.refunds),
            events,
        )


@pytest.mark.parametrize(("action", "status"), CASES, ids=[f"{a}-{s.value}" for a, s in CASES])
def test_transition_is_allowed_exactly_from_its_source_states(
    build: Builder, action: str, status: BillStatus
):
    bill_id = _make(build, status)
    staff_id = build.staff()
    run, allowed = ACTIONS[action]
    before = _snapshot(build, bill_id)
    if status in allowed:
        with build.db.transaction() as s:
            run(s, bill_id, staff_id)
        assert _snapshot(build, bill_id) != before
    else:
        with pytest.raises(DomainError) as excinfo, build.db.transaction() as s:
            run(s, bill_id, staff_id)
        assert excinfo.value.message  # a Chinese sentence fit to show a person
        assert _snapshot(build, bill_id) == before


def test_opening_a_draft_emits_bill_opened_with_seq_one(build: Builder):
    bill_id = build.bill(open_now=False)
    with build.db.transaction() as s:
        services.open_bill(s, bill_id)
    with build.db.transaction() as s:
        events = s.execute(select(OutboxEvent).where(OutboxEvent.bill_id == bill_id)).scalars().all()
        assert [(e.topic, e.seq) for e in events] == [("bill.opened", 1)]
        assert events[0].payload["bill"]["status"] == "open"
        assert events[0].payload["id"] == events[0].id


def test_voiding_closes_pending_attempts_for_remote_close(build: Builder):
    bill_id = build.bill()
    out_trade_no = build.attempt(bill_id)
    with build.db.transaction() as s:
        services.void_bill(s, bill_id, reason="重复开单")
    bill = build.get(bill_id)
    attempt = next(a for a in bill.attempts if a.out_trade_no == out_trade_no)
    assert (attempt.status.value, attempt.close_reason, attempt.remote_closed) == (
        "closed",
        "bill_voided",
        False,
    )
