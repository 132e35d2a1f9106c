"""Recovery: WeChat's notifications are not guaranteed, so we ask.

* :func:`reconcile_pending` — attempts pending past a few minutes are queried, with backoff
  (``check_count`` / ``next_check_at``); a SUCCESS goes through the same apply path as a notification.
* :func:`close_stale` — attempts we closed locally (superseded, bill paid or voided) are closed at
  WeChat, and expired ones are closed there and here; a close that races a payment (``ORDERPAID``)
  queries the order and takes the money (attached when it fits, the excess refunded).
* :func:`run_all` — both, then the due refunds (payments/refund_executor.py). Every function is
  idempotent and safe to run from a scheduler job or ``flask --app app payments recover``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import or_, select

from db import Database, utcnow
from erp_sync.outbox import Topic, emit
from payments import services
from payments.bills import bill_event_data, lock_bill
from payments.models import PAYABLE, AttemptStatus, Channel, PaymentAttempt
from payments.wechatpay import (
    OrderAlreadyPaid,
    OrderNotFound,
    PermanentError,
    RetryableError,
    Transaction,
    WeChatPayGateway,
)

log = logging.getLogger("renopay.payments.recovery")

FIRST_CHECK_AFTER = dt.timedelta(minutes=2)
MAX_BACKOFF = dt.timedelta(minutes=30)
Progress = Callable[[str], None]


@dataclass
class RecoveryReport:
    checked: int = 0
    applied: int = 0
    closed: int = 0
    expired: int = 0
    refunds_sent: int = 0
    errors: list[str] = field(default_factory=list)


def backoff(check_count: int) -> dt.timedelta:
    """1, 2, 4 … minutes, at most 30: a lost notification is found within minutes, a dead order stops
    costing queries."""
    return min(MAX_BACKOFF, dt.timedelta(minutes=2 ** min(check_count, 10)))


def facts_from_transaction(tx: Transaction) -> services.WeChatPaymentFacts:
    assert tx.transaction_id is not None and tx.amount_fen is not None
    return services.WeChatPaymentFacts(
        out_trade_no=tx.out_trade_no,
        transaction_id=tx.transaction_id,
        amount_fen=tx.amount_fen,
        appid=tx.appid,
        mchid=tx.mchid,
        success_time=tx.success_time or utcnow(),
        payer_openid=tx.payer_openid,
        trade_type=tx.trade_type,
    )


def apply_paid(db: Database, gw: WeChatPayGateway, tx: Transaction) -> str:
    with db.transaction() as session:
        result = services.apply_wechat_payment(
            session, facts_from_transaction(tx), appid=gw.appid, mchid=gw.mchid
        )
        return str(result.outcome)


def _due_pending(db: Database, now: dt.datetime, limit: int) -> list[str]:
    with db.transaction() as session:
        return list(
            session.execute(
                select(PaymentAttempt.out_trade_no)
                .where(
                    PaymentAttempt.status == AttemptStatus.pending,
                    PaymentAttempt.created_at <= now - FIRST_CHECK_AFTER,
                    or_(PaymentAttempt.next_check_at.is_(None), PaymentAttempt.next_check_at <= now),
                )
                .order_by(PaymentAttempt.next_check_at)
                .limit(limit)
            ).scalars()
        )


def check_attempt(db: Database, gw: WeChatPayGateway, out_trade_no: str, *, now: dt.datetime) -> str:
    """Query one pending attempt and act on the answer; returns what happened."""
    try:
        tx = gw.query_by_out_trade_no(out_trade_no)
    except OrderNotFound:
        tx = None
    except RetryableError as exc:
        _schedule_next(db, out_trade_no, now)
        return f"retry ({exc.code})"
    if tx is not None and tx.paid:
        return apply_paid(db, gw, tx)
    if tx is not None and tx.trade_state in ("CLOSED", "PAYERROR", "REVOKED"):
        _close_locally(db, out_trade_no, now, reason=tx.trade_state.lower(), remote_closed=True)
        return "closed"
    _schedule_next(db, out_trade_no, now)
    return "waiting"


def _schedule_next(db: Database, out_trade_no: str, now: dt.datetime) -> None:
    with db.transaction() as session:
        attempt = session.execute(
            select(PaymentAttempt).where(PaymentAttempt.out_trade_no == out_trade_no)
        ).scalar_one()
        attempt.check_count += 1
        attempt.next_check_at = now + backoff(attempt.check_count)


def _close_locally(
    db: Database, out_trade_no: str, now: dt.datetime, *, reason: str, remote_closed: bool
) -> None:
    """Close a pending attempt here; an unfinished in-WeChat payment earns the customer a 重新支付 notice."""
    with db.transaction() as session:
        attempt = session.execute(
            select(PaymentAttempt).where(PaymentAttempt.out_trade_no == out_trade_no)
        ).scalar_one()
        bill = lock_bill(session, attempt.bill_id)
        session.refresh(attempt)
        attempt.remote_closed = attempt.remote_closed or remote_closed
        if attempt.status is not AttemptStatus.pending:
            return
        attempt.close(now, reason)
        attempt.next_check_at = None
        if attempt.channel is Channel.jsapi and bill.status in PAYABLE:
            data = bill_event_data(
                bill,
                reason=reason,
                out_trade_no=out_trade_no,
                amount_fen=attempt.amount_fen,
                channel=str(attempt.channel),
            )
            emit(session, Topic.payment_failed, bill=bill, data=data, now=now)


def reconcile_pending(
    db: Database,
    gw: WeChatPayGateway,
    *,
    now: dt.datetime | None = None,
    limit: int = 200,
    progress: Progress | None = None,
) -> RecoveryReport:
    now = now or utcnow()
    report = RecoveryReport()
    for out_trade_no in _due_pending(db, now, limit):
        outcome = check_attempt(db, gw, out_trade_no, now=now)
        report.checked += 1
        report.applied += outcome in ("applied", "anomaly")
        report.closed += outcome == "closed"
        if progress:
            progress(f"queried {out_trade_no}: {outcome}")
    return report


def _to_close(db: Database, now: dt.datetime, limit: int) -> list[tuple[str, bool]]:
    """(out_trade_no, expired?) of attempts closed here but not at WeChat, and of expired pending ones."""
    with db.transaction() as session:
        rows = session.execute(
            select(PaymentAttempt.out_trade_no, PaymentAttempt.status)
            .where(
                or_(
                    (PaymentAttempt.status == AttemptStatus.closed) & PaymentAttempt.remote_closed.is_(False),
                    (PaymentAttempt.status == AttemptStatus.pending) & (PaymentAttempt.expires_at <= now),
                )
            )
            .order_by(PaymentAttempt.id)
            .limit(limit)
        ).all()
    return [(no, status is AttemptStatus.pending) for no, status in rows]


def close_remote(
    db: Database, gw: WeChatPayGateway, out_trade_no: str, *, expired: bool, now: dt.datetime
) -> str:
    try:
        gw.close_order(out_trade_no)
    except OrderAlreadyPaid:
        # The customer paid while we were closing: that is money received. Take it.
        return apply_paid(db, gw, gw.query_by_out_trade_no(out_trade_no))
    except OrderNotFound:
        pass  # the order was never created at WeChat: nothing to close there
    except PermanentError as exc:
        if exc.code not in ("ORDER_CLOSED", "ORDERCLOSED"):
            raise
    _close_locally(db, out_trade_no, now, reason="expired", remote_closed=True)
    return "expired" if expired else "closed"


def close_stale(
    db: Database,
    gw: WeChatPayGateway,
    *,
    now: dt.datetime | None = None,
    limit: int = 200,
    progress: Progress | None = None,
) -> RecoveryReport:
    now = now or utcnow()
    report = RecoveryReport()
    for out_trade_no, expired in _to_close(db, now, limit):
        try:
            outcome = close_remote(db, gw, out_trade_no, expired=expired, now=now)
        except (RetryableError, PermanentError) as exc:
            report.errors.append(f"{out_trade_no}: {exc.code}")
            outcome = f"error ({exc.code})"
        report.closed += outcome == "closed"
        report.expired += outcome == "expired"
        report.applied += outcome in ("applied", "anomaly")
        if progress:
            progress(f"closed {out_trade_no}: {outcome}")
    return report


def run_all(
    db: Database, gw: WeChatPayGateway, *, now: dt.datetime | None = None, progress: Progress | None = None
) -> RecoveryReport:
    from payments.refund_executor import execute_pending_refunds

    now = now or utcnow()
    pending = reconcile_pending(db, gw, now=now, progress=progress)
    stale = close_stale(db, gw, now=now, progress=progress)
    refunds = execute_pending_refunds(db, gw, now=now, progress=progress)
    return RecoveryReport(
        checked=pending.checked,
        applied=pending.applied + stale.applied,
        closed=pending.closed + stale.closed,
        expired=stale.expired,
        refunds_sent=refunds.sent,
        errors=pending.errors + stale.errors + refunds.errors,
    )
