"""The raw store of WeChat Pay notifications: every verified callback is kept before it is applied,
deduplicated by WeChat's event ``id`` (a redelivery finds the row and, once processed, is answered
at once). The decrypted resource is kept too, so finance can see what WeChat said."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import JSON, Integer, String, Table, Text, bindparam, func, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from db import Base, Prepared, UTCDateTime, session_connection, utcnow


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


def _insert_statement(dialect: str) -> Any:
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return (  # the Table, not the entity: a plain INSERT, no ORM bulk-insert machinery
        insert(_TABLE).on_conflict_do_nothing(index_elements=["event_id"]).returning(_TABLE.c.id)
    )


def _record_statement(dialect: str) -> Any:
    insert = (pg_insert if dialect == "postgresql" else sqlite_insert)(_TABLE)
    return insert.on_conflict_do_update(
        index_elements=["event_id"],
        set_={
            "deliveries": _TABLE.c.deliveries + 1,
            "outcome": func.coalesce(_TABLE.c.outcome, insert.excluded.outcome),
            "processed_at": func.coalesce(_TABLE.c.processed_at, insert.excluded.processed_at),
        },
    )


# Built once, run on the DBAPI cursor (every notification runs these).
_ROW_COLUMNS = ("event_id", "event_type", "channel", "reference", "body", "resource", "deliveries",
                "received_at")
_INSERT = {dialect: Prepared(_insert_statement(dialect), columns=_ROW_COLUMNS)
           for dialect in ("postgresql", "sqlite")}
_RECORD = {dialect: Prepared(_record_statement(dialect), columns=(*_ROW_COLUMNS, "outcome", "processed_at"))
           for dialect in ("postgresql", "sqlite")}
_REDELIVERED = Prepared(
    update(_TABLE)
    .where(_TABLE.c.event_id == bindparam("known_event_id"))
    .values(deliveries=_TABLE.c.deliveries + 1)
    .returning(_TABLE.c.outcome)
)
_MARK = Prepared(
    update(_TABLE)
    .where(_TABLE.c.event_id == bindparam("processed_event_id"), _TABLE.c.outcome.is_(None))
    .values(outcome=bindparam("new_outcome"), processed_at=bindparam("now"))
)


@dataclass(frozen=True)
class RawNotification:
    """A verified callback as it is stored: what WeChat sent, and what it decrypted to."""

    event_id: str
    event_type: str
    channel: str  # payment | refund
    reference: str | None  # out_trade_no / out_refund_no
    body: str
    resource: dict[str, Any]

    def row(self, now: dt.datetime, **extra: Any) -> dict[str, Any]:
        return {**vars(self), "deliveries": 1, "received_at": now, **extra}  # shallow: no copy of the body


def store_notification(session: Session, raw: RawNotification) -> str | None:
    """Insert the raw notification unless its event id is known; return the earlier outcome if any.

    ``INSERT … ON CONFLICT DO NOTHING`` makes concurrent deliveries of one event safe on both
    databases: exactly one insert wins, the others see the row.
    """
    connection = session_connection(session)
    if _INSERT[connection.dialect.name].first(connection, raw.row(utcnow())) is not None:
        return None
    return cast(str | None, _REDELIVERED.scalar(connection, {"known_event_id": raw.event_id}))


def record_processed(session: Session, raw: RawNotification, outcome: str) -> None:
    """Store the raw notification together with its outcome, in one statement: for callbacks whose
    applying is itself idempotent (a payment is applied once per ``transaction_id``), so there is no
    need to look the event up first. A redelivery (or a concurrent copy) only counts a delivery and
    never overwrites the first outcome."""
    now = utcnow()
    row = raw.row(now, outcome=outcome, processed_at=now)
    connection = session_connection(session)
    _RECORD[connection.dialect.name].send(connection, row)  # in a pipeline: goes out with the COMMIT


def mark_processed(session: Session, event_id: str, outcome: str) -> None:
    """Record the first outcome; a concurrent copy that found the payment already there ("duplicate")
    never overwrites what the delivery that applied it wrote. One UPDATE, no read-back."""
    _MARK.rowcount(session_connection(session), {"processed_event_id": event_id, "new_outcome": outcome,
                                                 "now": utcnow()})
