"""Collecting money: partial payments, reuse and supersession of attempts, and money that doesn't fit
becoming anomalies (never lost, never overpaying a bill)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from erp_sync.outbox import OutboxEvent
from payments import services
from payments.applying import Outcome
from payments.errors import AmountExceedsOutstanding
from payments.models import (
    AnomalyKind,
    AttemptStatus,
    BillStatus,
    Channel,
    PaymentAnomaly,
    Refund,
    RefundKind,
)
from tests.fixtures.domain import APPID, MCHID, Builder


def _events(build: Builder, bill_id: int) -> list[tuple[str, int | None]]:
    with build.db.transaction() as s:
        rows = s.execute(
            select(OutboxEvent).where(OutboxEvent.bill_id == bill_id).order_by(OutboxEvent.created_at)
        ).scalars()
        return [(e.topic, e.seq) for e in rows]


def test_38000_bill_paid_10000_then_28000_ends_paid_with_two_payments(build: Builder):
    bill_id = build.bill(3_800_000)
    first = build.pay(build.attempt(bill_id, 1_000_000), 1_000_000)
    assert first.outcome is Outcome.applied
    assert build.get(bill_id).status is BillStatus.partially_paid
    assert build.get(bill_id).outstanding_fen == 2_800_000
    second = build.pay(build.attempt(bill_id), 2_800_000)
    assert second.outcome is Outcome.applied
    bill = build.get(bill_id)
    assert (bill.status, bill.paid_fen, len(bill.payments)) == (BillStatus.paid, 3_800_000, 2)
    assert _events(build, bill_id) == [("bill.opened", 1), ("payment.succeeded", 2), ("payment.succeeded", 3)]


def test_a_further_payment_on_a_paid_bill_becomes_an_anomaly_and_an_excess_refund(build: Builder):
    bill_id = build.bill(3_800_000)
    stale = build.attempt(bill_id, 1_000_000)  # opened, then superseded by the full-amount attempt
    build.pay(build.attempt(bill_id), 3_800_000)
    late = build.pay(stale, 1_000_000)
    assert late.outcome is Outcome.anomaly
    bill = build.get(bill_id)
    assert (bill.status, bill.paid_fen) == (BillStatus.paid, 3_800_000)
    assert len(bill.payments) == 2  # the money is recorded, not lost
    with build.db.transaction() as s:
        anomaly = s.execute(select(PaymentAnomaly)).scalar_one()
        refund = s.execute(select(Refund)).scalar_one()
        assert (anomaly.kind, anomaly.amount_fen) == (AnomalyKind.overpayment, 1_000_000)
        assert (refund.kind, refund.amount_fen, refund.status.value) == (
            RefundKind.excess,
            1_000_000,
            "pending",
        )
    assert _events(build, bill_id)[-1] == ("payment.anomaly", 3)


def test_a_late_payment_on_a_superseded_attempt_is_attached_when_it_fits(build: Builder):
    bill_id = build.bill(3_800_000)
    old = build.attempt(bill_id, 1_000_000)
    build.attempt(bill_id, 2_000_000)  # supersedes the first
    result = build.pay(old, 1_000_000)
    assert result.outcome is Outcome.applied
    bill = build.get(bill_id)
    assert (bill.paid_fen, bill.status) == (1_000_000, BillStatus.partially_paid)
    assert next(a for a in bill.attempts if a.out_trade_no == old).status is AttemptStatus.succeeded


def test_overpayment_beyond_outstanding_applies_what_fits_and_refunds_the_rest(build: Builder):
    bill_id = build.bill(3_800_000)
    a = build.attempt(bill_id, 3_000_000)
    b = build.attempt(bill_id, 2_000_000)  # a stays payable at WeChat: a late payment
    build.pay(b, 2_000_000)
    result = build.pay(a, 3_000_000)
    bill = build.get(bill_id)
    assert (bill.paid_fen, bill.status) == (3_800_000, BillStatus.paid)
    assert result.payment is not None and result.payment.excess_fen == 1_200_000


def test_duplicate_notification_records_one_payment(build: Builder):
    bill_id = build.bill(3_800_000)
    out_trade_no = build.attempt(bill_id)
    first = build.pay(out_trade_no, 3_800_000, transaction_id="4200000001")
    again = build.pay(out_trade_no, 3_800_000, transaction_id="4200000001")
    assert (first.outcome, again.outcome) == (Outcome.applied, Outcome.duplicate)
    assert len(build.get(bill_id).payments) == 1


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        ({"appid": "wxother"}, AnomalyKind.merchant_mismatch),
        ({"mchid": "1"}, AnomalyKind.merchant_mismatch),
        ({"amount_fen": 1}, AnomalyKind.amount_mismatch),
        ({"out_trade_no": "NOPE-123456"}, AnomalyKind.unknown_order),
    ],
)
def test_money_that_cannot_be_attached_is_an_anomaly_once(build: Builder, change: dict, kind: AnomalyKind):
    bill_id = build.bill(3_800_000)
    facts = build.facts(build.attempt(bill_id), 3_800_000)
    facts = type(facts)(**{**facts.__dict__, **change})
    for _ in range(2):
        with build.db.transaction() as s:
            result = services.apply_wechat_payment(s, facts, appid=APPID, mchid=MCHID)
        assert result.outcome is Outcome.anomaly
    bill = build.get(bill_id)
    assert (bill.paid_fen, len(bill.payments)) == (0, 0)
    with build.db.transaction() as s:
        assert [a.kind for a in s.execute(select(PaymentAnomaly)).scalars()] == [kind]
        assert s.execute(select(OutboxEvent).where(OutboxEvent.topic == "payment.anomaly")).scalars().all()


def test_identical_attempt_is_reused_and_a_different_amount_supersedes(build: Builder):
    bill_id = build.bill(3_800_000)
    with build.db.transaction() as s:
        first = services.start_attempt(s, bill_id, channel=Channel.native, amount_fen=100_000)
    with build.db.transaction() as s:
        same = services.start_attempt(s, bill_id, channel=Channel.native, amount_fen=100_000)
        assert same.reused and same.attempt.id == first.attempt.id
    with build.db.transaction() as s:
        other = services.start_attempt(s, bill_id, channel=Channel.native, amount_fen=200_000)
        assert not other.reused and [a.id for a in other.superseded] == [first.attempt.id]


def test_attempt_above_outstanding_is_refused(build: Builder):
    bill_id = build.bill(3_800_000)
    with pytest.raises(AmountExceedsOutstanding), build.db.transaction() as s:
        services.start_attempt(s, bill_id, channel=Channel.native, amount_fen=3_800_001)
