"""The raw store of WeChat Pay notifications: every verified callback is kept before it is applied,
deduplicated by WeChat's event ``id`` (a redelivery finds the row and, once processed, is answered
at once). The decrypted resource is kept too, so finance can see what WeChat said."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from sqlalchemy import JSON, Integer, String, Table, Text, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from db import Base, UTCDateTime, utcnow


class PaymentNotification(Base):
    __tablename__ = "payment_notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    event_type: Mapped[str] = mapped_column(String(40))
    channel: Mapped[str] = mapped_column(String(16))  # payment | refund
    reference: Mapped[str | None] = mapped_column(String(64), index=True)  # out_trade_no / out_refund_no
    body: Mapped[str] = mapped_column(Text)
    resource: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    outcome: Mapped[str | None] = mapped_column(String(24))  # applied | duplicate | anomaly | ignored | …
    deliveries: Mapped[int] = mapped_column(Integer, default=1)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    processed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


_TABLE = cast(Table, PaymentNotification.__table__)


def store_notification(
    session: Session,
    *,
    event_id: str,
    event_type: str,
    channel: str,
    reference: str | None,
    body: str,
    resource: dict[str, Any],
) -> str | None:
    """Insert the raw notification unless its event id is known; return the earlier outcome if any.

    ``INSERT … ON CONFLICT DO NOTHING`` makes concurrent deliveries of one event safe on both
    databases: exactly one insert wins, the others see the row.
    """
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    now = utcnow()
    row = {
        "event_id": event_id,
        "event_type": event_type,
        "channel": channel,
        "reference": reference,
        "body": body,
        "resource": resource,
        "deliveries": 1,
        "received_at": now,
    }
    inserted = session.execute(
        insert(_TABLE)  # the Table, not the entity: a plain INSERT, no ORM bulk-insert machinery
        .values(**row)
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(_TABLE.c.id)
    ).first()
    if inserted is not None:
        return None
    existing = session.execute(
        select(PaymentNotification).where(PaymentNotification.event_id == event_id)
    ).scalar_one()
    existing.deliveries += 1
    return existing.outcome


def mark_processed(session: Session, event_id: str, outcome: str) -> None:
    """Record the first outcome; a concurrent copy that found the payment already there ("duplicate")
    never overwrites what the delivery that applied it wrote. One UPDATE, no read-back."""
    session.execute(
        update(_TABLE)
        .where(_TABLE.c.event_id == event_id, _TABLE.c.outcome.is_(None))
        .values(outcome=outcome, processed_at=utcnow())
    )
