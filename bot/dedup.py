"""Exactly-once handling of WeChat's retried pushes.

``claim`` inserts the push's dedup key as the *first* statement of the command's transaction; the
reply is stored in the same transaction. The unique index decides who runs the command: a retry that
arrives while the first delivery is still being processed blocks on that index (PostgreSQL) or on
the write lock (SQLite's BEGIN IMMEDIATE) until the first commits, then fails the insert and reads the
stored reply. If the first delivery rolls back, its claim disappears with it and the retry runs the
command itself. One commit per push.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.models import ReceivedPush
from db import Database, utcnow

RETRY_WAIT_SECONDS = 4.0  # WeChat waits 5 s per delivery; answer the retry before that
POLL_SECONDS = 0.05


class AlreadyClaimed(Exception):
    """Another delivery of the same push ran (or is running) the command."""


@dataclass(frozen=True)
class Stored:
    ready: bool
    reply_xml: str | None = None


def claim(session: Session, dedup_key: str, openid: str) -> int:
    """Insert the dedup row first thing in the command's transaction; its id, or AlreadyClaimed."""
    row = ReceivedPush(dedup_key=dedup_key, openid=openid, status="processing")
    session.add(row)
    try:
        session.flush()
    except IntegrityError as exc:
        raise AlreadyClaimed(dedup_key) from exc
    return row.id


def finish(session: Session, push_id: int, reply_xml: str | None) -> None:
    """Store the reply in the command's own transaction (same commit as its effects)."""
    row = session.get_one(ReceivedPush, push_id)
    row.status = "done"
    row.reply_xml = reply_xml
    row.finished_at = utcnow()


def wait_for_reply(db: Database, dedup_key: str, wait_seconds: float = RETRY_WAIT_SECONDS) -> Stored:
    deadline = time.monotonic() + wait_seconds
    while True:
        with db.transaction() as s:
            row = s.execute(
                select(ReceivedPush.status, ReceivedPush.reply_xml).where(ReceivedPush.dedup_key == dedup_key)
            ).one_or_none()
        if row is not None and row.status == "done":
            return Stored(True, row.reply_xml)
        if row is None or time.monotonic() >= deadline:
            # None: the first delivery rolled back (its claim with it); a later retry will run it.
            return Stored(False)
        time.sleep(POLL_SECONDS)
