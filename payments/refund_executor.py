"""Carrying out queued refunds at WeChat Pay.

A Refund row (status ``pending``) is the work item, written by the services in the transaction that
decided it (an excess payment, a customer refund). Here, after commit and outside any transaction,
each due one is sent with its own ``out_refund_no`` — the same on every retry, so WeChat never pays
twice — and the explicit refund notify_url. Accepted → ``processing`` (the result comes by
notification or query); refused for good → ``failed`` (an event tells finance); a temporary error
→ tried again later with backoff.
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
from payments.wechatpay import PermanentError, RetryableError, WeChatPayGateway

log = logging.getLogger("renopay.payments.refunds")


@dataclass
class RefundRun:
    sent: int = 0
    failed: int = 0
    retry: int = 0
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


def _retry_later(db: Database, out_refund_no: str, now: dt.datetime, error: str) -> None:
    with db.transaction() as session:
        refund = session.execute(select(Refund).where(Refund.out_refund_no == out_refund_no)).scalar_one()
        refund.check_count += 1
        refund.last_error = error[:200]
        refund.next_check_at = now + min(
            dt.timedelta(hours=1), dt.timedelta(minutes=2 ** min(refund.check_count, 6))
        )


def execute_pending_refunds(
    db: Database,
    gw: WeChatPayGateway,
    *,
    now: dt.datetime | None = None,
    limit: int = 100,
    progress: Callable[[str], None] | None = None,
) -> RefundRun:
    """Send every due pending refund to WeChat once; returns what happened."""
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
                services.mark_refund_processing(session, order.out_refund_no, refund_id=result.refund_id)
            run.sent += 1
            outcome = f"sent ({result.status})"
        if progress:
            progress(f"refund {order.out_refund_no}: {outcome}")
    return run
