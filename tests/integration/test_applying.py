"""The hot path of applying a WeChat payment (payments/applying.py) against the general ORM path:
the same rows and the same event, whichever path wrote them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import func, select, text

from db import CHINA_TZ
from erp_sync.outbox import OutboxDelivery, OutboxEvent
from payments import applying, services
from payments.applying import Outcome
from payments.models import AttemptStatus, Bill, BillStatus, Channel, Payment, PaymentAttempt
from payments.numbers import Counter
from tests.fixtures.domain import APPID, MCHID, Builder

WHEN = dt.datetime(2026, 11, 26, 2, 30, tzinfo=dt.UTC)
# What differs between two bills paid the same way: their numbers, ids and WeChat references.
VARYING = {"id", "created_at", "number", "receipt_no", "transaction_id", "out_trade_no"}


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "·" if k in VARYING else _scrub(v) for k, v in value.items()}
    return value


def _paid_event(build: Builder, bill_id: int) -> dict[str, Any]:
    with build.db.transaction() as s:
        event = s.execute(
            select(OutboxEvent).where(
                OutboxEvent.bill_id == bill_id, OutboxEvent.topic == "payment.succeeded"
            )
        ).scalar_one()
        return {"seq": event.seq, "payload": _scrub(event.payload)}


def _rows(build: Builder, bill_id: int) -> tuple[Any, ...]:
    with build.db.transaction() as s:
        bill = s.get_one(Bill, bill_id)
        payment = s.execute(select(Payment).where(Payment.bill_id == bill_id)).scalar_one()
        attempts = s.execute(
            select(PaymentAttempt.status, PaymentAttempt.close_reason, PaymentAttempt.closed_at)
            .where(PaymentAttempt.bill_id == bill_id)
            .order_by(PaymentAttempt.id)
        ).all()
        deliveries = s.execute(
            select(OutboxDelivery.subscriber, OutboxDelivery.status, OutboxDelivery.attempts,
                   OutboxDelivery.seq, OutboxDelivery.next_attempt_at == OutboxDelivery.created_at,
                   OutboxEvent.topic)
            .join(OutboxEvent, OutboxEvent.id == OutboxDelivery.event_id)
            .where(OutboxDelivery.bill_id == bill_id)
            .order_by(OutboxDelivery.seq, OutboxDelivery.subscriber)
        ).all()
        return (
            (bill.status, bill.paid_fen, bill.seq),
            (payment.amount_fen, payment.excess_fen, payment.refunded_fen, payment.method, payment.paid_at,
             payment.payer_openid, payment.attempt_id is not None, payment.receipt_no[:6]),
            [tuple(a) for a in attempts],
            [tuple(d) for d in deliveries],
        )


def _bill_with_two_orders(build: Builder, amount: int) -> tuple[int, str]:
    """A bill with a pending JSAPI order and a pending Native order for the whole amount."""
    bill_id = build.bill(amount, phone=f"139{amount:08d}")
    with build.db.transaction() as s:
        services.start_attempt(s, bill_id, channel=Channel.jsapi, payer_openid="o_payer")
    return bill_id, build.attempt(bill_id)


@pytest.mark.parametrize("amount", [3_800_000, 1])
def test_the_hot_path_writes_what_the_general_path_writes(
    build: Builder, monkeypatch: pytest.MonkeyPatch, amount: int
) -> None:
    fast_bill, fast_order = _bill_with_two_orders(build, amount)
    slow_bill, slow_order = _bill_with_two_orders(build, amount)
    assert build.pay(fast_order, amount, when=WHEN).outcome is Outcome.applied
    declined: list[str] = []

    def general_only(session: Any, facts: Any) -> None:
        declined.append(facts.out_trade_no)

    monkeypatch.setattr("payments.collect.apply_fitting_payment", general_only)
    assert build.pay(slow_order, amount, when=WHEN).outcome is Outcome.applied
    assert declined == [slow_order]  # the second bill really went through the general path

    fast, slow = _rows(build, fast_bill), _rows(build, slow_bill)
    assert fast == slow
    assert fast[0] == (BillStatus.paid, amount, 2)
    assert fast[2] == [(AttemptStatus.closed, "bill_paid", WHEN), (AttemptStatus.succeeded, None, None)]
    assert ("erp", "pending", 0, 2, True, "payment.succeeded") in fast[3]  # and to every other subscriber
    assert _paid_event(build, fast_bill) == _paid_event(build, slow_bill)


def test_the_hot_path_leaves_the_callers_objects_up_to_date(build: Builder) -> None:
    bill_id = build.bill(500_000)
    order = build.attempt(bill_id)
    facts = build.facts(order, 500_000, when=WHEN)
    with build.db.transaction() as s:
        bill = services.lock_bill(s, bill_id)  # loaded before the payment, by the same session
        attempt = s.execute(select(PaymentAttempt).where(PaymentAttempt.out_trade_no == order)).scalar_one()
        result = services.apply_wechat_payment(s, facts, appid=APPID, mchid=MCHID)
        assert result.outcome is Outcome.applied and result.payment is not None
        assert (bill.status, bill.paid_fen, bill.seq) == (BillStatus.paid, 500_000, 2)
        assert attempt.status is AttemptStatus.succeeded
        assert [p.id for p in bill.payments] == [result.payment.id]


def test_a_payment_the_hot_path_does_not_take_goes_to_the_general_path(build: Builder) -> None:
    """Overpayment: the hot path declines (None) and the general path records the excess."""
    bill_id = build.bill(1_000_000)
    order = build.attempt(bill_id, 1_000_000)
    with build.db.transaction() as s:
        declined = applying.apply_fitting_payment(s, build.facts(order, 1_500_000, when=WHEN))
    assert declined is None
    result = build.pay(order, 1_000_000, when=WHEN)
    assert result.outcome is Outcome.applied
    assert result.payment is not None
    again = build.pay(order, 1_000_000, transaction_id=result.payment.transaction_id)
    assert again.outcome is Outcome.duplicate
    assert build.get(bill_id).paid_fen == 1_000_000


def test_hot_path_receipt_numbers_follow_the_counter_and_reach_the_event(
    build: Builder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path numbers its payment in SQL (the counter bumped in the same round trip); the
    number in the payment row, in the event's payload and in the result are one and the same, and
    they continue the sequence the general path (which numbers in Python) also takes from."""
    hot_first, general, hot_second = (build.attempt(build.bill(100_000 + i, phone=f"1380000000{i}"))
                                      for i in range(3))
    first = build.pay(hot_first, 100_000, when=WHEN)
    monkeypatch.setattr("payments.collect.apply_fitting_payment", lambda session, facts: None)
    middle = build.pay(general, 100_001, when=WHEN)
    monkeypatch.undo()
    last = build.pay(hot_second, 100_002, when=WHEN)
    results = [first, middle, last]
    assert all(r.outcome is Outcome.applied and r.payment is not None for r in results)
    with build.db.read() as s:
        rows = s.execute(select(Payment.id, Payment.receipt_no).order_by(Payment.id)).all()
        events = s.execute(select(OutboxEvent.payload).where(OutboxEvent.topic == "payment.succeeded")
                           .order_by(OutboxEvent.created_at, OutboxEvent.seq)).scalars().all()
        stored = s.execute(text("SELECT CAST(payload AS TEXT) FROM outbox_events")).scalars().all()
    month = WHEN.astimezone(CHINA_TZ).strftime("%y%m")
    assert [r.receipt_no for r in rows] == [f"R{month}-{n:05d}" for n in (1, 2, 3)]
    assert [(r.payment.id, r.payment.receipt_no) for r in results] == [tuple(row) for row in rows]
    assert sorted(e["data"]["payment"]["receipt_no"] for e in events) == [r.receipt_no for r in rows]
    assert not [text_ for text_ in stored if "__receipt_" in text_]  # no placeholder left anywhere


MEDDLING = {  # a write to the locked rows that nothing can make while the payment holds the bill lock
    "bill": "UPDATE bills SET seq = seq + 1 WHERE id = :bill_id",
    "attempt": "UPDATE payment_attempts SET status = 'closed' WHERE out_trade_no = :out_trade_no",
}


@pytest.mark.parametrize("changed", sorted(MEDDLING))
def test_a_locked_row_that_changed_underneath_fails_the_whole_payment(
    build: Builder, monkeypatch: pytest.MonkeyPatch, changed: str
) -> None:
    """The hot path decides on copies of the rows it read and writes them back compare-and-set: a
    row that no longer holds what was read fails the transaction — on PostgreSQL inside the one
    statement that goes out with the COMMIT, which therefore never commits — and nothing of the
    payment is left: no payment, no event, no receipt number taken, the bill and order as before."""
    bill_id = build.bill(200_000)
    order = build.attempt(bill_id)
    number_for = applying.receipt_counter
    with pytest.raises(Exception, match="changed underneath") as raised:
        with build.db.transaction() as s:

            def meddle(when: dt.datetime) -> tuple[str, str]:  # runs between the read and the writes
                s.execute(text(MEDDLING[changed]), {"bill_id": bill_id, "out_trade_no": order})
                return number_for(when)

            monkeypatch.setattr(applying, "receipt_counter", meddle)
            applying.apply_fitting_payment(s, build.facts(order, 200_000, when=WHEN))
    assert f"the {changed}" in str(raised.value)
    monkeypatch.undo()
    with build.db.read() as s:
        assert s.scalar(select(func.count()).select_from(Payment)) == 0
        assert s.scalar(select(func.count()).select_from(OutboxEvent).where(
            OutboxEvent.topic == "payment.succeeded")) == 0
        assert s.scalar(select(func.count()).select_from(Counter).where(Counter.name.like("receipt-%"))) == 0
        bill = s.get_one(Bill, bill_id)
        assert (bill.status, bill.paid_fen, bill.seq) == (BillStatus.open, 0, 1)
        assert s.scalar(select(PaymentAttempt.status).where(PaymentAttempt.out_trade_no == order)) \
            is AttemptStatus.pending
    assert build.pay(order, 200_000, when=WHEN).outcome is Outcome.applied  # and the retry applies it
