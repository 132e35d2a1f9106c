"""The transactional outbox: events are written in the same transaction as the change they describe,
with one delivery row per interested subscriber. The relay (erp_sync/relay.py) delivers them after
commit. Nothing here talks to the outside world.

Subscribers are registered by the composition root (app.py) with the topics they want; an event
gets a delivery row for every subscriber registered at the moment it is emitted.
"""

from __future__ import annotations

import datetime as dt
import enum
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    ARRAY,
    JSON,
    Connection,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    func,
    insert,
    literal,
    select,
    text,
)
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from db import Base, Prepared, UTCDateTime, china_iso, session_connection, utcnow

if TYPE_CHECKING:
    from payments.models import Bill


class Topic(enum.StrEnum):
    bill_opened = "bill.opened"
    bill_voided = "bill.voided"
    bill_reminded = "bill.reminded"
    payment_succeeded = "payment.succeeded"
    payment_recorded_offline = "payment.recorded_offline"
    payment_failed = "payment.failed"
    payment_anomaly = "payment.anomaly"
    refund_succeeded = "refund.succeeded"
    refund_failed = "refund.failed"


# The event types of the public ERP webhook contract. Others (reminders, failures) feed notices only.
ERP_TOPICS = frozenset(
    {
        Topic.bill_opened,
        Topic.bill_voided,
        Topic.payment_succeeded,
        Topic.payment_recorded_offline,
        Topic.refund_succeeded,
        Topic.refund_failed,
        Topic.payment_anomaly,
    }
)


class DeliveryStatus(enum.StrEnum):
    pending = "pending"
    delivered = "delivered"
    dead = "dead"


class OutboxEvent(Base):
    __tablename__ = "outbox_events"
    __table_args__ = (UniqueConstraint("bill_id", "seq", name="uq_outbox_events_bill_seq"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    topic: Mapped[str] = mapped_column(String(40))
    bill_id: Mapped[int | None] = mapped_column(ForeignKey("bills.id"))  # indexed: uq_outbox_events_bill_seq
    seq: Mapped[int | None] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)

    deliveries: Mapped[list[OutboxDelivery]] = relationship(back_populates="event")


class OutboxDelivery(Base):
    __tablename__ = "outbox_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "subscriber", name="uq_outbox_deliveries_event_subscriber"),
        Index("ix_outbox_deliveries_due", "subscriber", "status", "next_attempt_at"),
        # The relay's "is an earlier event of this bill still pending?" probe (migration 0004_erp).
        Index(
            "ix_outbox_deliveries_pending_bill",
            "subscriber",
            "bill_id",
            "seq",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("outbox_events.id"))
    subscriber: Mapped[str] = mapped_column(String(32))
    # Copied from the event so the relay can order per bill without a join.
    bill_id: Mapped[int | None] = mapped_column(Integer)
    seq: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.pending.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    # The relay's lease (migration 0004_erp): a claimed delivery belongs to ``lease_owner`` until
    # ``lease_expires_at``; marks are fenced by the owner so a stale worker can't overwrite a newer one.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # Start of the current run of failures; the delivery is dead-lettered once it is old enough.
    failing_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    event: Mapped[OutboxEvent] = relationship(back_populates="deliveries")


@dataclass(frozen=True)
class Subscription:
    name: str
    topics: frozenset[str] | None  # None: every topic


class SubscriberRegistry:
    """Which subscribers want which topics. Filled by app.py; read by ``emit``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[str, Subscription] = {}

    def register(self, name: str, topics: Iterable[str] | None = None) -> None:
        with self._lock:
            self._subs[name] = Subscription(name, None if topics is None else frozenset(map(str, topics)))

    def clear(self) -> None:
        with self._lock:
            self._subs.clear()

    def for_topic(self, topic: str) -> list[str]:
        with self._lock:
            return [s.name for s in self._subs.values() if s.topics is None or topic in s.topics]

    def names(self) -> list[str]:
        with self._lock:
            return list(self._subs)


registry = SubscriberRegistry()
registry.register("erp", ERP_TOPICS)


_EVENTS = cast(Table, OutboxEvent.__table__)
_DELIVERIES = cast(Table, OutboxDelivery.__table__)
# Built once, run on the DBAPI cursor: every payment's hot path runs these.
_EVENT_COLUMNS = ("id", "topic", "bill_id", "seq", "payload", "created_at")
_DELIVERY_COLUMNS = ("event_id", "subscriber", "bill_id", "seq", "status", "attempts", "next_attempt_at",
                     "created_at")
_INSERT_EVENT = Prepared(insert(_EVENTS), columns=_EVENT_COLUMNS)
_INSERT_DELIVERIES = Prepared(insert(_DELIVERIES), columns=_DELIVERY_COLUMNS)


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


def build_event(
    topic: Topic | str,
    *,
    bill: Bill | None,
    data: Mapping[str, Any],
    now: dt.datetime | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The event's row and its delivery rows, not yet written (``emit`` writes them; a caller that
    writes them itself — see payments/applying.py — must do so in the same transaction).

    A contract event (``ERP_TOPICS``) of a bill bumps ``bill.seq`` — the caller holds the bill's row
    lock, so seq grows by exactly one per event the ERP sees. Internal events (reminders, failures)
    carry the bill's current view but take no seq of their own."""
    now = now or utcnow()
    seq: int | None = None
    bill_view: dict[str, Any] | None = None
    if bill is not None:
        if topic in ERP_TOPICS:
            bill.seq += 1
            seq = bill.seq
        bill_view = bill.webhook_view()
    event_id = new_event_id()
    payload = {
        "id": event_id,
        "type": str(topic),
        "created_at": china_iso(now),
        "bill": bill_view,
        "data": dict(data),
    }
    bill_id = bill.id if bill is not None else None
    event_row = {"id": event_id, "topic": str(topic), "bill_id": bill_id, "seq": seq, "payload": payload,
                 "created_at": now}
    deliveries = [
        {"event_id": event_id, "subscriber": name, "bill_id": bill_id, "seq": seq,
         "status": DeliveryStatus.pending.value, "attempts": 0, "next_attempt_at": now, "created_at": now}
        for name in registry.for_topic(str(topic))
    ]
    return event_row, deliveries


def insert_deliveries(connection: Connection, deliveries: list[dict[str, Any]]) -> None:
    if deliveries:
        _INSERT_DELIVERIES.many(connection, deliveries)


def fan_out_statement() -> Any:
    """PostgreSQL: an event's delivery rows — one per name in the array ``:subscribers``, as
    ``build_event`` makes them — in one INSERT … SELECT, for a statement that writes the event too
    (payments/applying.py). Binds: ``event_id``, ``event_bill_id``, ``event_seq``,
    ``event_created_at`` and ``subscribers``."""
    names = func.unnest(bindparam("subscribers", type_=ARRAY(String)))
    subscribers = names.table_valued("subscriber").render_derived()  # unnest(…) AS anon(subscriber)
    now = bindparam("event_created_at", type_=_DELIVERIES.c.created_at.type)
    rows = select(
        bindparam("event_id", type_=_DELIVERIES.c.event_id.type),
        subscribers.c.subscriber,
        bindparam("event_bill_id", type_=Integer),
        bindparam("event_seq", type_=Integer),
        literal(DeliveryStatus.pending.value, String),
        literal(0, Integer),
        now,
        now,
    )
    return insert(_DELIVERIES).from_select(list(_DELIVERY_COLUMNS), rows)


def emit(
    session: Session,
    topic: Topic | str,
    *,
    bill: Bill | None,
    data: Mapping[str, Any],
    now: dt.datetime | None = None,
) -> OutboxEvent:
    """Record an event in the caller's transaction (``build_event`` says what it holds)."""
    event_row, deliveries = build_event(topic, bill=bill, data=data, now=now)
    # Plain INSERTs on the session's connection (no unit of work: this runs on every payment's hot
    # path). The bill row, if any, is already in the database (callers flush it before emitting).
    connection = session_connection(session)  # flushes the caller's pending changes (the bill) first
    _INSERT_EVENT.send(connection, event_row)  # inside a db.pipeline(): queued, not waited for
    insert_deliveries(connection, deliveries)
    return OutboxEvent(**event_row)  # a detached copy of what was written, for the caller to read
