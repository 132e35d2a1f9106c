"""Slow work after the reply: a small queue in the database, run by an in-process worker thread.

Why not the outbox: the outbox carries domain events to the ERP and notices; these tasks are chat
plumbing (make a QR image, upload it, send it to the person who asked). They are written in the
command's transaction (so a retried push never queues one twice), kicked right after commit (so
the person gets the image within a second or two), and ``run_due_tasks`` sweeps anything a crashed
process left behind (the scheduler can call it every minute). A task is claimed by flipping it to
``running`` with a lease; an expired lease makes it due again.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from bot.models import BotTask
from db import Database, utcnow

log = logging.getLogger("renopay.bot.tasks")

TaskHandler = Callable[[str, dict[str, Any]], None]  # (openid, payload); raise to retry
MAX_ATTEMPTS = 5
LEASE = dt.timedelta(minutes=2)
_HANDLERS: dict[str, TaskHandler] = {}


def register_task(kind: str, handler: TaskHandler) -> None:
    _HANDLERS[kind] = handler


def enqueue(session: Session, kind: str, openid: str, payload: dict[str, Any]) -> None:
    if kind not in _HANDLERS:
        raise ValueError(f"no handler registered for task kind {kind!r}")
    task = BotTask(kind=kind, openid=openid, payload=payload, status="pending", next_attempt_at=utcnow())
    session.add(task)
    session.info["renopay.chat.tasks_queued"] = True  # the endpoint kicks the worker after commit


def _claim(db: Database, limit: int) -> list[BotTask]:
    now = utcnow()
    with db.transaction() as s:
        query = (
            select(BotTask)
            .where(or_(BotTask.status == "pending", BotTask.status == "running"))
            .where(BotTask.next_attempt_at <= now)
            .order_by(BotTask.id)
            .limit(limit)
        )
        if not db.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        tasks = list(s.execute(query).scalars())
        for task in tasks:
            task.status, task.attempts, task.next_attempt_at = "running", task.attempts + 1, now + LEASE
        return tasks


def _finish(db: Database, task_id: int, error: str | None) -> None:
    with db.transaction() as s:
        task = s.get_one(BotTask, task_id)
        if error is None:
            task.status, task.finished_at = "done", utcnow()
            return
        task.last_error = error[:300]
        if task.attempts >= MAX_ATTEMPTS:
            task.status, task.finished_at = "dead", utcnow()
        else:
            task.status = "pending"
            task.next_attempt_at = utcnow() + dt.timedelta(seconds=2 ** task.attempts)


def run_due_tasks(app: Flask, limit: int = 20) -> int:
    """Run every due task once; returns how many ran. Call inside or outside an app context."""
    db: Database = app.extensions["renopay.db"]
    ran = 0
    with app.app_context():
        for task in _claim(db, limit):
            handler = _HANDLERS.get(task.kind)
            error = None
            try:
                if handler is None:
                    raise LookupError(f"no handler for {task.kind}")
                handler(task.openid, dict(task.payload))
            except Exception as exc:  # any failure is retried with backoff, then dead-lettered
                log.warning("chat task %s (%s) failed: %s", task.id, task.kind, type(exc).__name__)
                error = f"{type(exc).__name__}: {exc}"
            _finish(db, task.id, error)
            ran += 1
    return ran


class TaskKicker:
    """One daemon thread per app that runs due tasks whenever a request has queued some."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def kick(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="chat-tasks", daemon=True)
                self._thread.start()
        self._wake.set()

    def _loop(self) -> None:
        # Runs while there is work (including retries waiting for their backoff); exits when idle.
        while self._wake.wait(timeout=5) or self._pending():
            self._wake.clear()
            try:
                while run_due_tasks(self.app):
                    pass
            except Exception:  # the sweep job retries; never let the thread die on a DB hiccup
                log.exception("chat task worker")

    def _pending(self) -> bool:
        db: Database = self.app.extensions["renopay.db"]
        try:
            with db.transaction() as s:
                found = s.execute(select(BotTask.id).where(BotTask.status == "pending").limit(1)).first()
                return found is not None
        except Exception:  # database gone (app shut down): stop the thread
            return False
