"""Use cases of collecting money: WeChat order attempts, applying WeChat payments, offline payments,
and anomalies (money that arrived but cannot be applied normally — recorded, never dropped)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter

from db import utcnow
from erp_sync.outbox import Topic, emit
from payments.applying import (
    Outcome,
    PaymentResult,
    WeChatPaymentFacts,
    apply_fitting_payment,
    payment_data,
    payment_view,
)
from payments.bills import bill_event_data, lock_bill
from payments.errors import AmountBelowMinimum, InvalidAmount, InvalidInput
from payments.models import (
    PAYABLE,
    AnomalyKind,
    AttemptStatus,
    Bill,
    BillStatus,
    Channel,
    Payment,
    PaymentAnomaly,
    PaymentAttempt,
    PaymentMethod,
    RefundKind,
)
from payments.numbers import new_out_trade_no, next_receipt_number


@dataclass
class AttemptStart:
    attempt: PaymentAttempt
    reused: bool
    superseded: list[PaymentAttempt] = field(default_factory=list)


def start_attempt(
    session: Session,
    bill_id: int,
    *,
    channel: Channel,
    amount_fen: int | None = None,
    payer_openid: str | None = None,
    min_fen: int = 1,
    ttl: dt.timedelta = dt.timedelta(hours=2),
    now: dt.datetime | None = None,
) -> AttemptStart:
    """Open (or reuse) the WeChat order attempt for paying ``amount_fen`` of a bill.

    At most one pending attempt per bill and channel (and payer, for JSAPI): an identical one is
    reused; a different one is superseded (closed here; the recovery job closes it at WeChat, and a
    payment that still lands on it is healed as a late payment). Only the row is written here; the
    caller creates the order at WeChat after commit and stores what WeChat answered.
    """
    now = now or utcnow()
    bill = lock_bill(session, bill_id)
    amount = bill.outstanding_fen if amount_fen is None else amount_fen
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise InvalidAmount("支付金额必须大于 0")
    bill.require_payable(amount)
    if amount < min(min_fen, bill.outstanding_fen):
        raise AmountBelowMinimum(f"单次支付金额不能低于 ¥{min_fen / 100:.2f}")
    if channel is Channel.jsapi and not payer_openid:
        raise InvalidInput("JSAPI 支付需要付款人的 openid")
    superseded: list[PaymentAttempt] = []
    for attempt in bill.attempts:
        if attempt.status is not AttemptStatus.pending or attempt.channel is not channel:
            continue
        same = attempt.amount_fen == amount and attempt.payer_openid == payer_openid
        if same and attempt.expires_at > now + dt.timedelta(minutes=5):
            return AttemptStart(attempt, reused=True)
        attempt.close(now, "superseded")
        superseded.append(attempt)
    attempt = PaymentAttempt(
        bill_id=bill.id,
        out_trade_no=new_out_trade_no(bill.number),
        channel=channel,
        amount_fen=amount,
        status=AttemptStatus.pending,
        payer_openid=payer_openid,
        expires_at=now + ttl,
        created_at=now,
        next_check_at=now + dt.timedelta(minutes=2),
    )
    session.add(attempt)
    session.flush()
    return AttemptStart(attempt, reused=False, superseded=superseded)


def record_order_created(
    session: Session, attempt_id: int, *, prepay_id: str | None = None, code_url: str | None = None
) -> PaymentAttempt:
    attempt = session.get_one(PaymentAttempt, attempt_id)
    attempt.prepay_id = prepay_id or attempt.prepay_id
    attempt.code_url = code_url or attempt.code_url
    return attempt


def fail_attempt(session: Session, attempt_id: int, *, reason: str) -> PaymentAttempt:
    """WeChat refused to create the order (a permanent error): the attempt will never be paid."""
    attempt = session.get_one(PaymentAttempt, attempt_id)
    lock_bill(session, attempt.bill_id)
    if attempt.status is AttemptStatus.pending:
        attempt.fail(reason)
    return attempt


def apply_wechat_payment(
    session: Session, facts: WeChatPaymentFacts, *, appid: str, mchid: str
) -> PaymentResult:
    """Apply money WeChat says arrived, exactly once per ``transaction_id``.

    The bill row lock serialises concurrent deliveries of the same notification: the second one
    finds the Payment the first one wrote. Money that does not fit (overpayment, a bill no longer
    payable) is still recorded as a Payment whose excess is refunded, plus an anomaly; money that
    cannot be attached at all (unknown order, wrong merchant, wrong amount) becomes an anomaly.
    """
    if facts.appid != appid or facts.mchid != mchid:
        if _paid_already(session, facts.transaction_id):
            return PaymentResult(Outcome.duplicate)
        detail = {"facts": _facts_view(facts)}
        return _anomaly_result(session, AnomalyKind.merchant_mismatch, facts, None, detail)
    fitting = apply_fitting_payment(session, facts)  # the common case, in a few Core statements
    if fitting is not None:
        return fitting
    detail = {"facts": _facts_view(facts)}  # what an anomaly records
    # Lock the bill through its attempt in one statement, then read the attempt and look for the
    # payment under that lock: a concurrent delivery of the same notification waits here and then
    # finds the Payment the first one committed.
    bill = session.execute(_LOCK_BILL_OF_ORDER, {"out_trade_no": facts.out_trade_no}).scalar_one_or_none()
    if bill is None:
        if _paid_already(session, facts.transaction_id):
            return PaymentResult(Outcome.duplicate)
        return _anomaly_result(session, AnomalyKind.unknown_order, facts, None, detail)
    if _paid_already(session, facts.transaction_id):
        return PaymentResult(Outcome.duplicate)
    attempt = session.execute(_ATTEMPT_OF_ORDER, {"out_trade_no": facts.out_trade_no}).scalar_one()
    if facts.amount_fen != attempt.amount_fen or attempt.status not in (
        AttemptStatus.pending,
        AttemptStatus.closed,
    ):
        detail["attempt"] = {"amount_fen": attempt.amount_fen, "status": str(attempt.status)}
        return _anomaly_result(session, AnomalyKind.amount_mismatch, facts, bill, detail)

    late = attempt.status is AttemptStatus.closed
    attempt.succeed()
    applied = min(facts.amount_fen, bill.outstanding_fen) if bill.status in PAYABLE else 0
    payment = Payment(
        bill_id=bill.id,
        attempt_id=attempt.id,
        method=PaymentMethod.wechat,
        amount_fen=facts.amount_fen,
        excess_fen=facts.amount_fen - applied,
        refunded_fen=0,
        transaction_id=facts.transaction_id,
        receipt_no=next_receipt_number(session, facts.success_time),
        payer_openid=facts.payer_openid,
        paid_at=facts.success_time,
    )
    session.add(payment)
    session.flush()
    if applied:
        bill.apply_payment(applied)
        emit(session, Topic.payment_succeeded, bill=bill, data=payment_data(bill, payment, attempt, late))
        _close_others_if_paid(session, bill, attempt, facts.success_time)
    if payment.excess_fen:
        kind = AnomalyKind.overpayment if bill.status in PAYABLE | {BillStatus.paid} else (
            AnomalyKind.bill_not_payable
        )
        anomaly = _record_anomaly(session, kind, facts, bill, detail, payment=payment)
        _queue_excess_refund(session, payment)
        return PaymentResult(Outcome.anomaly if not applied else Outcome.applied, payment, anomaly)
    return PaymentResult(Outcome.applied, payment)


# Built once: every notification runs these. (The UPDATE in _close_others_if_paid is built per call:
# with its values as bound parameters, the ORM could not bring the attempts this session holds up to date.)
_ORDER: BindParameter[str] = bindparam("out_trade_no")
_LOCK_BILL_OF_ORDER = (
    select(Bill)
    .join(PaymentAttempt, PaymentAttempt.bill_id == Bill.id)
    .where(PaymentAttempt.out_trade_no == _ORDER)
    .with_for_update(of=Bill)
    .execution_options(populate_existing=True)
)
_ATTEMPT_OF_ORDER = (
    select(PaymentAttempt)
    .where(PaymentAttempt.out_trade_no == _ORDER)
    .execution_options(populate_existing=True)
)
_PAID_BY_TRANSACTION = select(Payment.id).where(Payment.transaction_id == bindparam("transaction_id"))


def _paid_already(session: Session, transaction_id: str) -> bool:
    """A Payment for this WeChat transaction exists (looked up by id only: no object is loaded)."""
    found = session.execute(_PAID_BY_TRANSACTION, {"transaction_id": transaction_id}).first()
    return found is not None


def _close_others_if_paid(
    session: Session, bill: Bill, paid_attempt: PaymentAttempt, now: dt.datetime
) -> None:
    """A paid bill takes no more money: close its other pending attempts here (one statement, under
    the bill lock); the recovery job closes them at WeChat, and a payment that still lands on one
    is healed as a late payment."""
    if bill.status is not BillStatus.paid:
        return
    session.execute(
        update(PaymentAttempt)
        .where(
            PaymentAttempt.bill_id == bill.id,
            PaymentAttempt.status == AttemptStatus.pending,
            PaymentAttempt.id != paid_attempt.id,
        )
        .values(status=AttemptStatus.closed, closed_at=now, close_reason="bill_paid")
        .execution_options(synchronize_session="fetch")
    )


def _queue_excess_refund(session: Session, payment: Payment) -> None:
    from payments.refunds import queue_refund  # refunds builds on collect; import at use

    queue_refund(
        session,
        payment=payment,
        amount_fen=payment.excess_fen,
        kind=RefundKind.excess,
        out_refund_no=f"EX-{payment.transaction_id}",
        reason="超额付款自动退回",
        source="auto",
    )


def _facts_view(facts: WeChatPaymentFacts) -> dict[str, Any]:
    return {
        "out_trade_no": facts.out_trade_no,
        "transaction_id": facts.transaction_id,
        "amount_fen": facts.amount_fen,
        "appid": facts.appid,
        "mchid": facts.mchid,
        "success_time": facts.success_time.isoformat(),
        "trade_type": facts.trade_type,
    }


def _anomaly_result(
    session: Session, kind: AnomalyKind, facts: WeChatPaymentFacts, bill: Bill | None, detail: dict[str, Any]
) -> PaymentResult:
    return PaymentResult(Outcome.anomaly, anomaly=_record_anomaly(session, kind, facts, bill, detail))


def _record_anomaly(
    session: Session,
    kind: AnomalyKind,
    facts: WeChatPaymentFacts,
    bill: Bill | None,
    detail: dict[str, Any],
    *,
    payment: Payment | None = None,
) -> PaymentAnomaly:
    """One anomaly per (kind, transaction_id): a redelivered notification finds the first record."""
    existing = session.execute(
        select(PaymentAnomaly).where(
            PaymentAnomaly.kind == kind, PaymentAnomaly.transaction_id == facts.transaction_id
        )
    ).scalar_one_or_none()
    if existing is not None:
        return existing
    anomaly = PaymentAnomaly(
        kind=kind,
        bill_id=bill.id if bill else None,
        payment_id=payment.id if payment else None,
        out_trade_no=facts.out_trade_no,
        transaction_id=facts.transaction_id,
        amount_fen=payment.excess_fen if payment else facts.amount_fen,
        detail=detail,
    )
    try:
        with session.begin_nested():
            session.add(anomaly)
    except IntegrityError:  # a concurrent delivery of the same unattachable notification won
        return session.execute(
            select(PaymentAnomaly).where(
                PaymentAnomaly.kind == kind, PaymentAnomaly.transaction_id == facts.transaction_id
            )
        ).scalar_one()
    data = {"kind": str(kind), "amount_fen": anomaly.amount_fen, "detail": detail}
    if bill is not None:
        data.update(bill_event_data(bill))
    emit(session, Topic.payment_anomaly, bill=bill, data=data)
    return anomaly


def record_offline_payment(
    session: Session,
    bill_id: int,
    *,
    amount_fen: int,
    method: PaymentMethod,
    staff_id: int,
    note: str | None = None,
    now: dt.datetime | None = None,
) -> Payment:
    """Finance records a bank transfer or cash received outside WeChat."""
    now = now or utcnow()
    if method is PaymentMethod.wechat:
        raise InvalidInput("线下收款只能是转账或现金")
    bill = lock_bill(session, bill_id)
    bill.require_payable(amount_fen)
    if amount_fen <= 0:
        raise InvalidAmount("金额必须大于 0")
    payment = Payment(
        bill_id=bill.id,
        method=method,
        amount_fen=amount_fen,
        excess_fen=0,
        refunded_fen=0,
        receipt_no=next_receipt_number(session, now),
        recorded_by_id=staff_id,
        note=(note or "").strip()[:200] or None,
        paid_at=now,
    )
    session.add(payment)
    session.flush()
    bill.apply_payment(amount_fen)
    data = bill_event_data(bill, payment=payment_view(payment), recorded_by_id=staff_id)
    emit(session, Topic.payment_recorded_offline, bill=bill, data=data, now=now)
    return payment

