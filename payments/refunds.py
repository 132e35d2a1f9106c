"""Use cases of giving money back. A Refund row is written first (the work item, with the
``out_refund_no`` reused on every retry); carrying it out at WeChat happens after commit.

Refundable money of a bill = net paid − refunds in flight. At most one refund is in flight per
payment; a request larger than one payment is spread over several, newest payment first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import china_iso, utcnow
from erp_sync.outbox import Topic, emit
from payments.bills import bill_event_data, lock_bill
from payments.errors import IdempotencyConflict, IllegalTransition, InvalidInput, RefundNotAllowed
from payments.models import (
    REFUNDABLE,
    Payment,
    PaymentMethod,
    Refund,
    RefundKind,
    RefundStatus,
)
from payments.money import format_fen

WECHAT_REFUND_WINDOW = dt.timedelta(days=365)
WECHAT_MAX_REFUNDS_PER_ORDER = 50
WECHAT_REFUND_SPACING = dt.timedelta(minutes=1, seconds=5)
OPEN_STATUSES = (RefundStatus.pending, RefundStatus.processing)
_OUT_REFUND_NO_CHARS = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-|*@")


def refund_request_hash(bill_number: str, amount_fen: int, reason: str) -> str:
    raw = json.dumps([bill_number, amount_fen, reason], ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


def _customer_refunds(payment: Payment, statuses: tuple[RefundStatus, ...]) -> int:
    return sum(
        r.amount_fen for r in payment.refunds if r.kind is RefundKind.customer and r.status in statuses
    )


def payment_refundable_fen(payment: Payment) -> int:
    return payment.applied_fen - _customer_refunds(payment, (*OPEN_STATUSES, RefundStatus.succeeded))


def queue_refund(
    session: Session,
    *,
    payment: Payment,
    amount_fen: int,
    kind: RefundKind,
    out_refund_no: str,
    reason: str,
    source: str,
    request_no: str | None = None,
    request_hash: str | None = None,
    requested_by_id: int | None = None,
    now: dt.datetime | None = None,
) -> Refund:
    """Write one refund work item. WeChat's own limits are checked here, before any call."""
    now = now or utcnow()
    if payment.method is PaymentMethod.wechat:
        if now - payment.paid_at > WECHAT_REFUND_WINDOW:
            raise RefundNotAllowed("微信支付超过一年的款项不能原路退回，请线下退款")
        if len(payment.refunds) >= WECHAT_MAX_REFUNDS_PER_ORDER:
            raise RefundNotAllowed("这笔付款的退款次数已达微信上限（50 次）")
    last = max((r.created_at for r in payment.refunds), default=None)
    refund = Refund(
        bill_id=payment.bill_id,
        payment_id=payment.id,
        out_refund_no=out_refund_no,
        request_no=request_no or out_refund_no,
        request_hash=request_hash,
        kind=kind,
        amount_fen=amount_fen,
        reason=reason[:80],
        status=RefundStatus.pending,
        source=source,
        requested_by_id=requested_by_id,
        created_at=now,
        # WeChat wants at least a minute between two refunds of one order: wait, don't refuse.
        next_check_at=max(now, last + WECHAT_REFUND_SPACING) if last else now,
    )
    session.add(refund)
    payment.refunds.append(refund)
    session.flush()
    if payment.method is not PaymentMethod.wechat:
        # Offline money goes back offline: finance already handed it over when recording this.
        _finish(session, refund, RefundStatus.succeeded, now)
    return refund


def request_refund(
    session: Session,
    *,
    bill_id: int,
    amount_fen: int,
    reason: str,
    request_no: str,
    source: str,
    requested_by_id: int | None = None,
    now: dt.datetime | None = None,
) -> list[Refund]:
    """Refund part or all of a bill. Idempotent on ``request_no``: the same request returns the
    refunds it created; a different request under the same number is a conflict."""
    now = now or utcnow()
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("请说明退款原因")
    if not request_no or len(request_no) > 60 or not set(request_no) <= _OUT_REFUND_NO_CHARS:
        raise InvalidInput("退款单号需为 1–60 位字母、数字或 _-|*@")
    bill = lock_bill(session, bill_id)
    digest = refund_request_hash(bill.number, amount_fen, reason)
    existing = list(session.execute(select(Refund).where(Refund.request_no == request_no)).scalars())
    if existing:
        if existing[0].request_hash != digest:
            raise IdempotencyConflict("同一退款单号的请求内容不一致")
        return existing
    if bill.status not in REFUNDABLE:
        raise RefundNotAllowed(f"账单 {bill.number} 没有可退的款项")
    if not isinstance(amount_fen, int) or isinstance(amount_fen, bool) or amount_fen <= 0:
        raise InvalidInput("退款金额必须大于 0")
    payments = sorted(bill.payments, key=lambda p: (p.paid_at, p.id), reverse=True)
    in_flight = sum(_customer_refunds(p, OPEN_STATUSES) for p in payments)
    refundable = bill.net_paid_fen - in_flight
    if amount_fen > refundable:
        raise RefundNotAllowed(f"退款金额超过可退金额，目前最多可退 {format_fen(refundable)}")
    plan: list[tuple[Payment, int]] = []
    remaining = amount_fen
    for payment in payments:
        if remaining == 0:
            break
        if any(r.in_flight for r in payment.refunds if r.kind is RefundKind.customer):
            continue
        part = min(remaining, payment_refundable_fen(payment))
        if part > 0:
            plan.append((payment, part))
            remaining -= part
    if remaining:
        raise RefundNotAllowed("有退款正在处理中，请等它完成后再退剩余金额")
    refunds = []
    for index, (payment, part) in enumerate(plan, start=1):
        out_refund_no = request_no if len(plan) == 1 else f"{request_no}-{index}"
        refunds.append(
            queue_refund(
                session,
                payment=payment,
                amount_fen=part,
                kind=RefundKind.customer,
                out_refund_no=out_refund_no,
                reason=reason,
                source=source,
                request_no=request_no,
                request_hash=digest,
                requested_by_id=requested_by_id,
                now=now,
            )
        )
    return refunds


def mark_refund_processing(session: Session, out_refund_no: str, *, refund_id: str | None) -> Refund:
    refund = _get(session, out_refund_no)
    lock_bill(session, refund.bill_id)
    session.refresh(refund)
    if refund.status is RefundStatus.pending:
        refund.status = RefundStatus.processing
    refund.refund_id = refund_id or refund.refund_id
    return refund


_ALLOWED_FROM = {
    RefundStatus.succeeded: {RefundStatus.pending, RefundStatus.processing, RefundStatus.abnormal},
    RefundStatus.closed: {RefundStatus.pending, RefundStatus.processing, RefundStatus.abnormal},
    RefundStatus.abnormal: {RefundStatus.pending, RefundStatus.processing},
    RefundStatus.failed: {RefundStatus.pending},
}


def apply_refund_result(
    session: Session,
    out_refund_no: str,
    *,
    status: RefundStatus,
    refund_id: str | None = None,
    error: str | None = None,
    now: dt.datetime | None = None,
) -> Refund:
    """Apply WeChat's verdict on a refund once; a repeated verdict is a no-op."""
    refund = _get(session, out_refund_no)
    lock_bill(session, refund.bill_id)
    session.refresh(refund)
    refund.refund_id = refund_id or refund.refund_id
    if refund.status is status:
        return refund
    if status not in _ALLOWED_FROM or refund.status not in _ALLOWED_FROM[status]:
        raise IllegalTransition(f"refund {out_refund_no} cannot go from {refund.status} to {status}")
    refund.last_error = (error or "")[:200] or refund.last_error
    _finish(session, refund, status, now or utcnow())
    return refund


def _finish(session: Session, refund: Refund, status: RefundStatus, now: dt.datetime) -> None:
    bill = lock_bill(session, refund.bill_id)
    payment = refund.payment
    refund.status = status
    refund.next_check_at = None
    if status is not RefundStatus.abnormal:
        refund.finished_at = now
    if status is RefundStatus.succeeded:
        payment.refunded_fen += refund.amount_fen
        if refund.kind is RefundKind.customer:
            bill.apply_refund(refund.amount_fen)
    topic = Topic.refund_succeeded if status is RefundStatus.succeeded else Topic.refund_failed
    data = bill_event_data(bill, refund=refund_view(refund))
    emit(session, topic, bill=bill, data=data, now=now)


def refund_view(refund: Refund) -> dict[str, object]:
    return {
        "out_refund_no": refund.out_refund_no,
        "request_no": refund.request_no,
        "kind": str(refund.kind),
        "amount_fen": refund.amount_fen,
        "reason": refund.reason,
        "status": str(refund.status),
        "receipt_no": refund.payment.receipt_no,
        "transaction_id": refund.payment.transaction_id,
        "created_at": china_iso(refund.created_at),
    }


def _get(session: Session, out_refund_no: str) -> Refund:
    refund = session.execute(select(Refund).where(Refund.out_refund_no == out_refund_no)).scalar_one_or_none()
    if refund is None:
        raise RefundNotAllowed("没有找到这笔退款")
    return refund
