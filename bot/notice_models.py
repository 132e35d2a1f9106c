"""The notices table: one row per (event, recipient, kind) — what we sent to whom, and what became of it.

The row is what makes notices idempotent on top of the relay's at-least-once delivery: a relay run
that finds the row already ``sent`` (or delivered, fallback_sent, undeliverable) sends nothing more.
Nothing here knows about money; ``event_id`` is the outbox event the notice was built from.
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import BigInteger, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from db import Base, UTCDateTime, utcnow


class NoticeStatus(enum.StrEnum):
    queued = "queued"  # row written, nothing accepted by WeChat yet (a retryable error keeps it here)
    sent = "sent"  # WeChat accepted the template message (msgid known)
    delivered = "delivered"  # TEMPLATESENDJOBFINISH said success
    failed = "failed"  # refused: template permanently (msgid None, fallback decided next) or by the job
    undeliverable = "undeliverable"  # permanent failure and no customer-service window: given up
    fallback_sent = "fallback_sent"  # a customer-service message went out instead of the template


class Notice(Base):
    __tablename__ = "notices"
    __table_args__ = (
        UniqueConstraint("event_id", "recipient", "kind", name="uq_notices_event_recipient_kind"),
        Index("ix_notices_msgid", "msgid"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40))
    recipient: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=NoticeStatus.queued.value)
    template_id: Mapped[str | None] = mapped_column(String(64))
    msgid: Mapped[int | None] = mapped_column(BigInteger)
    errcode: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
