"""Tables of the WeChat channel: received pushes (dedup + stored reply) and slow-work tasks.

Both are wire-level bookkeeping; nothing here knows about money.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from db import Base, UTCDateTime, utcnow


class ReceivedPush(Base):
    """One push from WeChat, keyed by its dedup key. The row is inserted as the first statement of the
    command's transaction, so a retry that arrives while the first delivery is still being processed
    waits on the unique key instead of running the command a second time; the reply is stored in the
    same transaction as the command's effects, so a retry gets exactly what the first delivery got."""

    __tablename__ = "chat_pushes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(160), unique=True)
    openid: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default="processing")  # committed as "done"
    reply_xml: Mapped[str | None] = mapped_column(Text)  # plaintext reply; None = "success"
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class BotTask(Base):
    """Slow work taken out of the 5-second request (QR images, uploads), delivered afterwards as a
    customer-service message. Written in the command's transaction, so a retried push never queues
    it twice; run after commit by an in-process worker thread, and swept by ``run_due_tasks``."""

    __tablename__ = "chat_tasks"
    __table_args__ = (Index("ix_chat_tasks_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    openid: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|running|done|dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
