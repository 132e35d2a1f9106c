"""Tables of the chat commands: staff invites, the audit log, pending drafts and QR-scene bindings."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from db import Base, UTCDateTime, utcnow


class StaffInvite(Base):
    """A one-time code from ``flask --app app staff invite``; only its SHA-256 is stored."""

    __tablename__ = "staff_invites"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    staff_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuditEntry(Base):
    """Every staff action (and every staff command tried by someone who is not staff)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    openid: Mapped[str] = mapped_column(String(64), index=True)
    staff_id: Mapped[int | None] = mapped_column(Integer)
    command: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(String(500))
    outcome: Mapped[str] = mapped_column(String(24))  # ok | denied | refused | error
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class PendingDraft(Base):
    """The draft bill a staff member previewed and has not yet confirmed (at most one each)."""

    __tablename__ = "chat_pending_drafts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id"), unique=True)
    bill_id: Mapped[int] = mapped_column(ForeignKey("bills.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class QrScene(Base):
    """A parametric-QR scene a staff member requested for a customer; scanning it binds the openid."""

    __tablename__ = "chat_qr_scenes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scene: Mapped[str] = mapped_column(String(64), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    staff_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    bound_openid: Mapped[str | None] = mapped_column(String(64))
    bound_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
