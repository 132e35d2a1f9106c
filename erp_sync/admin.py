"""Operator queries and repairs on the outbox: status, retry, replay. Used by the CLI (and later an
admin page or /metrics); every function takes the caller's session."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from erp_sync.outbox import DeliveryStatus, OutboxDelivery, OutboxEvent


@dataclass
class SubscriberStatus:
    name: str
    counts: dict[str, int] = field(default_factory=dict)
    due_now: int = 0
    in_flight: int = 0
    backing_off: int = 0
    oldest_due_at: dt.datetime | None = None
    oldest_pending_created_at: dt.datetime | None = None
    next_attempt_at: dt.datetime | None = None
    not_ready: str | None = None
    failing: list[OutboxDelivery] = field(default_factory=list)


def status(session: Session, now: dt.datetime, *, failing_limit: int = 10) -> dict[str, SubscriberStatus]:
    d = OutboxDelivery
    result: dict[str, SubscriberStatus] = {}
    for name, state, count in session.execute(
        select(d.subscriber, d.status, func.count()).group_by(d.subscriber, d.status)
    ):
        result.setdefault(name, SubscriberStatus(name)).counts[state] = count
    pending = d.status == DeliveryStatus.pending.value
    leased = (d.lease_expires_at.is_not(None)) & (d.lease_expires_at > now)
    for name, info in result.items():
        mine = (d.subscriber == name) & pending
        info.in_flight = _count(session, mine & leased)
        info.due_now = _count(session, mine & ~leased.self_group() & (d.next_attempt_at <= now))
        info.backing_off = _count(session, mine & (d.next_attempt_at > now) & d.last_error.is_not(None))
        info.oldest_due_at = session.scalar(select(func.min(d.next_attempt_at)).where(mine))
        info.oldest_pending_created_at = session.scalar(select(func.min(d.created_at)).where(mine))
        info.next_attempt_at = session.scalar(
            select(func.min(d.next_attempt_at)).where(mine & (d.next_attempt_at > now))
        )
        info.failing = list(
            session.scalars(
                select(d)
                .where(mine & d.last_error.is_not(None))
                .order_by(d.next_attempt_at)
                .limit(failing_limit)
            )
        )
    return result


def _count(session: Session, condition: ColumnElement[bool]) -> int:
    return int(session.scalar(select(func.count()).select_from(OutboxDelivery).where(condition)) or 0)


def _requeue(now: dt.datetime) -> dict[str, object]:
    return {
        "status": DeliveryStatus.pending.value,
        "next_attempt_at": now,
        "attempts": 0,
        "failing_since": None,
        "lease_owner": None,
        "lease_expires_at": None,
    }


def retry(session: Session, target: str, now: dt.datetime) -> int:
    """Requeue one delivery (its numeric id) or every delivery of an event (``evt_…``) that is not
    pending, with a fresh retry window. Returns how many rows changed."""
    d = OutboxDelivery
    where = d.event_id == target if target.startswith("evt_") else d.id == _int(target)
    return _update(session, where & (d.status != DeliveryStatus.pending.value), now)


def retry_dead(session: Session, now: dt.datetime, subscriber: str | None = None) -> int:
    d = OutboxDelivery
    where = d.status == DeliveryStatus.dead.value
    if subscriber:
        where = where & (d.subscriber == subscriber)
    return _update(session, where, now)


def replay(
    session: Session,
    since: dt.datetime,
    now: dt.datetime,
    *,
    subscriber: str | None = None,
    until: dt.datetime | None = None,
) -> int:
    """Send delivered events created in [since, until) again; receivers dedupe by Idempotency-Key.
    The relay keeps per-bill order, so replayed events of a bill go out in seq order."""
    d = OutboxDelivery
    events = select(OutboxEvent.id).where(OutboxEvent.created_at >= since)
    if until is not None:
        events = events.where(OutboxEvent.created_at < until)
    where = (d.status == DeliveryStatus.delivered.value) & d.event_id.in_(events)
    if subscriber:
        where = where & (d.subscriber == subscriber)
    return _update(session, where, now)


def _update(session: Session, where: ColumnElement[bool], now: dt.datetime) -> int:
    result = session.execute(
        update(OutboxDelivery).where(where).values(**_requeue(now)).execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a delivery id nor an event id (evt_…)") from None
