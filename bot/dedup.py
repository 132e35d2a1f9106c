"""Exactly-once handling of WeChat's retried pushes.

``claim`` inserts the push's dedup key in its own short transaction before anything else happens.
The unique index decides who runs the command: a retry (even one arriving while the first delivery
is still being processed, in another worker) fails the insert and waits for the stored reply instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.models import ReceivedPush
from db import Database, utcnow

RETRY_WAIT_SECONDS = 4.0  # WeChat waits 5 s per delivery; answer the retry before that
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Claim:
    push_id: int | None  # None: another delivery of the same push owns it
    dedup_key: str


@dataclass(frozen=True)
class Stored:
    ready: bool
    reply_xml: str | None = None


def claim(db: Database, dedup_key: str, openid: str) -> Claim:
    try:
        with db.transaction() as s:
            row = ReceivedPush(dedup_key=dedup_key, openid=openid, status="processing")
            s.add(row)
            s.flush()
            return Claim(row.id, dedup_key)
    except IntegrityError:
        return Claim(None, dedup_key)


def finish(session: Session, push_id: int, reply_xml: str | None) -> None:
    """Store the reply in the command's own transaction (same commit as its effects)."""
    row = session.get_one(ReceivedPush, push_id)
    row.status = "done"
    row.reply_xml = reply_xml
    row.finished_at = utcnow()


def release(db: Database, push_id: int) -> None:
    """The command failed and rolled back: forget the claim so WeChat's retry can run it again."""
    with db.transaction() as s:
        s.execute(delete(ReceivedPush).where(ReceivedPush.id == push_id))


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
            # None: the first delivery failed and released its claim; a later retry will run it.
            return Stored(False)
        time.sleep(POLL_SECONDS)
