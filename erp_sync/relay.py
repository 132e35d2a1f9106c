"""The outbox relay: claim due deliveries, deliver them outside any transaction, mark the outcome.

Invariants it protects:
- **No concurrent double send.** A claim is a short transaction that leases rows to one owner
  (``lease_owner``/``lease_expires_at``; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, serialised writers
  on SQLite). Nobody else claims a leased row until the lease expires, and a worker stops sending
  once the time left on its lease is shorter than one call can take. Marks are fenced by the owner,
  so a worker whose lease was taken over cannot overwrite the newer outcome.
- **At least once, never lost.** A worker that dies after sending leaves the row pending; when the
  lease expires it is sent again with the same ``Idempotency-Key`` (the event id).
- **Per-bill order.** A delivery is due only when no earlier-``seq`` delivery of the same bill and
  subscriber is still pending (dead letters don't block), so a batch holds at most one per bill.
- **Retries for days.** Failures back off exponentially with jitter up to an hour; a delivery failing
  for ``retry_window`` (3 days) is dead-lettered. Subscribers that are not ready are not claimed.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, exists, literal, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session, aliased

import observability
from db import Database, utcnow
from erp_sync.outbox import DeliveryStatus, OutboxDelivery, OutboxEvent
from erp_sync.subscribers import DeliveryError, PermanentError, RetryableError, Subscriber

Clock = Callable[[], dt.datetime]


@dataclass(frozen=True)
class RelayPolicy:
    batch_size: int = 100
    lease: dt.timedelta = dt.timedelta(seconds=120)
    call_budget: float = 15.0  # the longest one deliver() may take (webhook: connect + read timeout)
    base_delay: float = 2.0
    max_delay: float = 3600.0
    retry_window: dt.timedelta = dt.timedelta(days=3)
    concurrency: int = 4  # parallel sends within a batch; a batch holds at most one delivery per bill


def backoff_seconds(failures: int, policy: RelayPolicy, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with "equal jitter": uniformly in [d/2, d], d = base·2^(failures-1) ≤ cap."""
    exponent = min(max(failures - 1, 0), 32)
    ceiling = min(policy.max_delay, policy.base_delay * float(1 << exponent))
    return ceiling / 2 + rand() * ceiling / 2


@dataclass
class Claimed:
    delivery_id: int
    event_id: str
    payload: dict[str, Any]
    attempts: int
    failing_since: dt.datetime | None
    error: DeliveryError | None = None
    sent: bool = False


@dataclass
class RelayStats:
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    released: int = 0
    batches: int = 0
    by_subscriber: dict[str, int] = field(default_factory=dict)

    @property
    def attempted(self) -> int:
        return self.delivered + self.failed + self.dead

    def add(self, other: RelayStats) -> None:
        for name in ("delivered", "failed", "dead", "released", "batches"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for key, value in other.by_subscriber.items():
            self.by_subscriber[key] = self.by_subscriber.get(key, 0) + value


# Called in the marking transaction with (session, subscriber name, the deliveries that just went dead).
DeadLetterHook = Callable[[Session, str, list[Claimed]], None]


def new_owner() -> str:
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(4)}"


def due_deliveries(subscriber: str, now: dt.datetime, limit: int, *, skip_locked: bool) -> Any:
    earlier = aliased(OutboxDelivery)
    # 'pending' is rendered inline: psycopg prepares repeated statements, and a generic plan with a
    # bound status cannot use the partial index ix_outbox_deliveries_pending_bill (seconds per claim).
    pending = literal(DeliveryStatus.pending.value, literal_execute=True)
    blocked = exists().where(
        earlier.subscriber == OutboxDelivery.subscriber,
        earlier.bill_id == OutboxDelivery.bill_id,
        earlier.seq < OutboxDelivery.seq,
        earlier.status == pending,
    )
    query = (
        select(OutboxDelivery.id)
        .where(
            OutboxDelivery.subscriber == subscriber,
            OutboxDelivery.status == pending,
            OutboxDelivery.next_attempt_at <= now,
            or_(OutboxDelivery.lease_expires_at.is_(None), OutboxDelivery.lease_expires_at <= now),
            or_(OutboxDelivery.bill_id.is_(None), OutboxDelivery.seq.is_(None), ~blocked),
        )
        # Oldest due first, along ix_outbox_deliveries_due: ordering by id would walk every delivered
        # row on PostgreSQL before reaching the pending ones.
        .order_by(OutboxDelivery.next_attempt_at, OutboxDelivery.id)
        .limit(limit)
    )
    return query.with_for_update(skip_locked=True, of=OutboxDelivery) if skip_locked else query


class Relay:
    def __init__(
        self,
        db: Database,
        subscribers: Mapping[str, Subscriber],
        *,
        policy: RelayPolicy | None = None,
        clock: Clock = utcnow,
        rand: Callable[[], float] = random.random,
        owner: str | None = None,
        on_dead: DeadLetterHook | None = None,
    ):
        self.db = db
        self.on_dead = on_dead
        self.subscribers = subscribers
        self.policy = policy or RelayPolicy()
        self.clock = clock
        self.rand = rand
        self.owner = owner or new_owner()

    def ready_subscribers(self) -> list[Subscriber]:
        return [s for s in self.subscribers.values() if s.not_ready_reason() is None]

    def run_once(self) -> RelayStats:
        """One batch per ready subscriber."""
        stats = RelayStats()
        for subscriber in self.ready_subscribers():
            stats.add(self.run_batch(subscriber))
        return stats

    def drain(
        self, *, max_seconds: float | None = None, progress: Callable[[RelayStats], None] | None = None
    ) -> RelayStats:
        """Run batches until nothing is due (or ``max_seconds`` passed)."""
        total = RelayStats()
        started = time.monotonic()
        while True:
            stats = self.run_once()
            total.add(stats)
            if progress is not None and stats.attempted + stats.released:
                progress(total)
            if stats.attempted == 0 or (max_seconds is not None and time.monotonic() - started > max_seconds):
                return total

    def run_batch(self, subscriber: Subscriber) -> RelayStats:
        started = time.monotonic()
        batch = self.claim(subscriber.name)
        stats = RelayStats()
        if not batch:
            return stats
        stats.batches = 1
        deadline = started + self.policy.lease.total_seconds() - self.policy.call_budget

        def send(item: Claimed) -> Claimed:
            if time.monotonic() > deadline:
                return item  # our lease could run out mid-call: leave it to the next claim
            item.sent = True
            try:
                subscriber.deliver(item.payload)
            except DeliveryError as exc:
                item.error = exc
            except Exception as exc:  # a subscriber bug must not kill the relay: retry with backoff
                item.error = RetryableError(f"unexpected {type(exc).__name__}: {exc}")
            return item

        workers = max(1, min(self.policy.concurrency, len(batch)))
        if workers == 1:
            results = [send(item) for item in batch]
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix=f"relay-{subscriber.name}") as pool:
                results = list(pool.map(send, batch))
        self.mark(results, stats, subscriber.name)
        stats.by_subscriber[subscriber.name] = stats.delivered
        for result in ("delivered", "failed", "dead", "released"):  # /metrics: deliveries by result
            if getattr(stats, result):
                observability.inc("renopay_outbox_deliveries_total", getattr(stats, result),
                                  subscriber=subscriber.name, result=result)
        return stats

    def claim(self, subscriber: str) -> list[Claimed]:
        now = self.clock()
        with self.db.transaction() as session:
            query = due_deliveries(subscriber, now, self.policy.batch_size, skip_locked=not self.db.is_sqlite)
            ids = list(session.execute(query).scalars())
            if not ids:
                return []
            session.execute(
                update(OutboxDelivery)
                .where(OutboxDelivery.id.in_(ids))
                .values(
                    lease_owner=self.owner,
                    lease_expires_at=now + self.policy.lease,
                    attempts=OutboxDelivery.attempts + 1,
                )
                .execution_options(synchronize_session=False)
            )
            rows = session.execute(
                select(
                    OutboxDelivery.id,
                    OutboxDelivery.event_id,
                    OutboxEvent.payload,
                    OutboxDelivery.attempts,
                    OutboxDelivery.failing_since,
                )
                .join(OutboxEvent, OutboxEvent.id == OutboxDelivery.event_id)
                .where(OutboxDelivery.id.in_(ids))
                .order_by(OutboxDelivery.id)
            ).all()
        return [Claimed(r[0], r[1], dict(r[2]), r[3], r[4]) for r in rows]

    def mark(self, results: list[Claimed], stats: RelayStats, subscriber: str = "") -> None:
        now = self.clock()
        dead: list[Claimed] = []
        with self.db.transaction() as session:
            for item in results:
                values = self._outcome(item, now, stats)
                fenced = and_(OutboxDelivery.id == item.delivery_id, OutboxDelivery.lease_owner == self.owner)
                marked: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                    update(OutboxDelivery)
                    .where(fenced, OutboxDelivery.status == DeliveryStatus.pending.value)
                    .values(lease_owner=None, lease_expires_at=None, **values)
                    .execution_options(synchronize_session=False)
                )
                if values.get("status") == DeliveryStatus.dead.value and marked.rowcount:
                    dead.append(item)
            if dead and self.on_dead is not None:  # the alert commits with the dead letter, exactly once
                self.on_dead(session, subscriber, dead)

    def _outcome(self, item: Claimed, now: dt.datetime, stats: RelayStats) -> dict[str, Any]:
        if not item.sent:
            stats.released += 1
            return {"attempts": OutboxDelivery.attempts - 1}
        if item.error is None:
            stats.delivered += 1
            return {
                "status": DeliveryStatus.delivered.value,
                "delivered_at": now,
                "last_error": None,
                "failing_since": None,
            }
        failing_since = item.failing_since or now
        too_old = now - failing_since >= self.policy.retry_window
        if isinstance(item.error, PermanentError) or too_old:
            stats.dead += 1
            reason = "permanent" if isinstance(item.error, PermanentError) else "retry window exhausted"
            return {
                "status": DeliveryStatus.dead.value,
                "last_error": f"{item.error.detail} [dead: {reason}]",
                "failing_since": failing_since,
            }
        stats.failed += 1
        delay = backoff_seconds(item.attempts, self.policy, self.rand)
        return {
            "next_attempt_at": now + dt.timedelta(seconds=delay),
            "last_error": item.error.detail,
            "failing_since": failing_since,
        }
