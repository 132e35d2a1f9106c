"""Carrying out queued refunds at WeChat Pay.

A Refund row (status ``pending``) is the work item, written by the services in the transaction that
decided it (an excess payment, a customer refund). Here, after commit and outside any transaction,
each due one is sent with its own ``out_refund_no`` — the same on every retry, so WeChat never pays
twice — and the explicit refund notify_url. Accepted → ``processing`` (the result comes by
notification or query); refused for good → ``failed`` (an event tells finance); a temporary error
→ tried again later with backoff.

Refunds that stay ``processing`` (a lost REFUND.* notification) are queried, first a couple of
minutes after WeChat accepted them, then with backoff up to an hour; the answer goes through
:func:`payments.refund_results.settle_refund`, the same path as a notification.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select

from db import Database, utcnow
from payments import services
from payments.models import Payment, Refund, RefundStatus
from payments.refund_results import WECHAT_STATUS, settle_refund
from payments.wechatpay import PermanentError, RetryableError, WeChatPayGateway

log = logging.getLogger("renopay.payments.refunds")

FIRST_QUERY_AFTER = dt.timedelta(minutes=2)
MAX_QUERY_BACKOFF = dt.timedelta(hours=1)


@dataclass
class RefundRun:
    sent: int = 0
    failed: int = 0
    retry: int = 0
    queried: int = 0
    settled: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Order:
    out_refund_no: str
    transaction_id: str
    refund_fen: int
    total_fen: int
    reason: str


def _due(db: Database, now: dt.datetime, limit: int) -> list[_Order]:
    with db.transaction() as session:
        rows = session.execute(
            select(Refund, Payment)
            .join(Payment, Refund.payment_id == Payment.id)
            .where(
                Refund.status == RefundStatus.pending,
                Payment.transaction_id.is_not(None),
                (Refund.next_check_at.is_(None)) | (Refund.next_check_at <= now),
            )
            .order_by(Refund.id)
            .limit(limit)
        ).all()
        return [
            _Order(r.out_refund_no, str(p.transaction_id), r.amount_fen, p.amount_fen, r.reason)
            for r, p in rows
        ]


def query_backoff(check_count: int) -> dt.timedelta:
    """2, 4, 8 … minutes, at most an hour."""
    return min(MAX_QUERY_BACKOFF, dt.timedelta(minutes=2 ** min(check_count, 6)))


def _retry_later(db: Database, out_refund_no: str, now: dt.datetime, error: str | None) -> None:
    with db.transaction() as session:
        refund = session.execute(select(Refund).where(Refund.out_refund_no == out_refund_no)).scalar_one()
        refund.check_count += 1
        refund.last_error = error[:200] if error else refund.last_error
        refund.next_check_at = now + query_backoff(refund.check_count)


def execute_pending_refunds(
    db: Database,
    gw: WeChatPayGateway,
    *,
    now: dt.datetime | None = None,
    limit: int = 100,
    progress: Callable[[str], None] | None = None,
) -> RefundRun:
    """Send every due pending refund to WeChat once, then query the due processing ones."""
    now = now or utcnow()
    run = RefundRun()
    for order in _due(db, now, limit):
        try:
            result = gw.create_refund(
                out_refund_no=order.out_refund_no,
                transaction_id=order.transaction_id,
                refund_fen=order.refund_fen,
                total_fen=order.total_fen,
                reason=order.reason,
            )
        except RetryableError as exc:
            _retry_later(db, order.out_refund_no, now, f"{exc.code}: {exc.detail}")
            run.retry += 1
            outcome = f"retry later ({exc.code})"
        except PermanentError as exc:
            with db.transaction() as session:
                services.apply_refund_result(
                    session,
                    order.out_refund_no,
                    status=RefundStatus.failed,
                    error=f"{exc.code}: {exc.detail}",
                    now=now,
                )
            run.failed += 1
            run.errors.append(f"{order.out_refund_no}: {exc.code}")
            outcome = f"failed ({exc.code})"
        else:
            with db.transaction() as session:
                refund = services.mark_refund_processing(
                    session, order.out_refund_no, refund_id=result.refund_id
                )
                final = WECHAT_STATUS.get(result.status)
                if final is not None and refund.status is RefundStatus.processing:
                    settle_refund(
                        session, order.out_refund_no, status=final, refund_id=result.refund_id, now=now
                    )
                elif refund.status is RefundStatus.processing:
                    refund.next_check_at = now + FIRST_QUERY_AFTER  # then ask, if no notification came
            run.sent += 1
            outcome = f"sent ({result.status})"
        if progress:
            progress(f"refund {order.out_refund_no}: {outcome}")
    query_processing_refunds(db, gw, now=now, limit=limit, progress=progress, run=run)
    return run


def _due_queries(db: Database, now: dt.datetime, limit: int) -> list[str]:
    with db.transaction() as session:
        return list(
            session.execute(
                select(Refund.out_refund_no)
                .where(
                    Refund.status == RefundStatus.processing,
                    (Refund.next_check_at.is_(None)) | (Refund.next_check_at <= now),
                )
                .order_by(Refund.next_check_at, Refund.id)
                .limit(limit)
            ).scalars()
        )


def query_refund(db: Database, gw: WeChatPayGateway, out_refund_no: str, *, now: dt.datetime) -> str:
    """Ask WeChat about one processing refund and apply a final answer; returns what happened."""
    try:
        result = gw.query_refund(out_refund_no)
    except (RetryableError, PermanentError) as exc:
        _retry_later(db, out_refund_no, now, f"query {exc.code}: {exc.detail}")
        return f"retry ({exc.code})"
    status = WECHAT_STATUS.get(result.status)
    if status is None:  # still PROCESSING
        _retry_later(db, out_refund_no, now, None)
        return "waiting"
    with db.transaction() as session:
        settle_refund(session, out_refund_no, status=status, refund_id=result.refund_id, now=now)
    return str(status)


def query_processing_refunds(
    db: Database,
    gw: WeChatPayGateway,
    *,
    now: dt.datetime | None = None,
    limit: int = 100,
    progress: Callable[[str], None] | None = None,
    run: RefundRun | None = None,
) -> RefundRun:
    """Query every processing refund that is due (a lost notification is healed here)."""
    now = now or utcnow()
    run = run or RefundRun()
    for out_refund_no in _due_queries(db, now, limit):
        outcome = query_refund(db, gw, out_refund_no, now=now)
        run.queried += 1
        run.settled += outcome in ("succeeded", "closed", "abnormal")
        if progress:
            progress(f"queried refund {out_refund_no}: {outcome}")
    return run
