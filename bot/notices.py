"""Notices as an outbox subscriber: template messages to customers and staff, built from event payloads
and delivered by the relay (erp_sync/relay.py) after commit.

Invariants it protects:
- **Once per (event, recipient, kind).** A ``notices`` row is written before the send and marked right
  after it; a relay run that finds it ``sent`` (or further) sends nothing. Only a crash between
  WeChat's answer and that mark can repeat a message (WeChat's template API has no idempotency key).
- **No endless retry.** Retryable errors (network, -1, quotas) go back to the relay, which backs off and
  dead-letters after its window. Permanent ones (43004 not following, 40003, 47003, …) fall back to
  a customer-service message when the recipient wrote within 48 hours, else the row is
  ``undeliverable`` and the delivery counts as done.
- **TEMPLATESENDJOBFINISH** moves a ``sent`` row to ``delivered`` or ``failed`` (bot/endpoint.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from flask import Flask
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot import notice_templates
from bot.client import PermanentWeChatError, RetryableWeChatError, WeChatApiError
from bot.notice_content import (
    DEAD_LETTER_TOPIC,
    TOPICS,
    Directory,
    NoDirectory,
    Planned,
    custom_text,
    plan,
    values,
)
from bot.notice_models import Notice, NoticeStatus
from db import Database, utcnow
from erp_sync import RetryableError, Subscriber, on_dead_letter, register_subscriber
from erp_sync.outbox import emit

log = logging.getLogger("renopay.bot.notices")

DIRECTORY_KEY = "renopay.notices.directory"  # set by the composition root (payments/receipts.py)
SERVICE_WINDOW = dt.timedelta(hours=48)
JOB_FINISH_WAIT = 2.0  # the finish push can overtake our "sent" mark; WeChat waits 5 s for an answer
DONE = frozenset(s.value for s in (NoticeStatus.sent, NoticeStatus.delivered, NoticeStatus.undeliverable,
                                   NoticeStatus.fallback_sent))

__all__ = ["DEAD_LETTER_TOPIC", "DIRECTORY_KEY", "CustomerNotices", "init_app", "record_job_finish"]


class CustomerNotices(Subscriber):
    """Customer notices and staff alerts (subscriber ``notices``)."""

    name = "notices"
    topics = TOPICS

    def __init__(self, app: Flask, *, clock: Any = utcnow) -> None:
        self.app = app
        self.clock = clock
        settings = app.extensions["renopay.settings"]
        self.templates = notice_templates.load(settings.templates, sandbox=settings.sandbox)

    @property
    def db(self) -> Database:
        return self.app.extensions["renopay.db"]  # type: ignore[no-any-return]

    @property
    def directory(self) -> Directory:
        found: Directory | None = self.app.extensions.get(DIRECTORY_KEY)
        return found or NoDirectory()

    def deliver(self, payload: Mapping[str, Any]) -> None:
        links = self.app.extensions["renopay.links"]
        retry: list[str] = []
        for planned in plan(payload, self.directory, links):
            try:
                self.send(str(payload["id"]), planned, payload)
            except RetryableWeChatError as exc:  # the others are done; the relay retries this one
                retry.append(f"{planned.kind}: wechat {exc.errcode or exc.http_status or 'transport'}")
        if retry:
            raise RetryableError("; ".join(retry))

    # ------------------------------------------------------------------ one notice

    def send(self, event_id: str, planned: Planned, payload: Mapping[str, Any]) -> None:
        notice_id, status, msgid = self._row(event_id, planned)
        if status in DONE or (status == NoticeStatus.failed and msgid is not None):
            return
        source = values(payload)
        if status == NoticeStatus.queued and self._send_template(notice_id, planned, source):
            return
        self._fall_back(notice_id, planned, source)

    def _send_template(self, notice_id: int, planned: Planned, source: Mapping[str, object]) -> bool:
        """True when sent; False when the template was refused for good (or none is configured)."""
        from bot import wechat_client

        template = self.templates.get(planned.kind)
        if template is None:
            self._mark(notice_id, status=NoticeStatus.failed, last_error="no template configured")
            return False
        data = notice_templates.render(template, source)
        try:
            result = wechat_client(self.app).send_template(planned.openid, template.template_id, data,
                                                           url=planned.link)
        except PermanentWeChatError as exc:
            self._failed(notice_id, exc, NoticeStatus.failed)
            return False
        except WeChatApiError as exc:
            self._failed(notice_id, exc, None)
            raise
        self._mark(notice_id, status=NoticeStatus.sent, msgid=result.msgid, template_id=template.template_id,
                   errcode=None, last_error=None, attempts=Notice.attempts + 1)
        return True

    def _fall_back(self, notice_id: int, planned: Planned, source: Mapping[str, object]) -> None:
        from bot import wechat_client

        if not self.wrote_recently(planned.openid):
            self._mark(notice_id, status=NoticeStatus.undeliverable)
            return
        try:
            text = custom_text(planned.kind, source, planned.link)
            wechat_client(self.app).send_custom_text(planned.openid, text)
        except PermanentWeChatError as exc:
            self._failed(notice_id, exc, NoticeStatus.undeliverable)
            return
        except WeChatApiError as exc:
            self._failed(notice_id, exc, None)
            raise
        self._mark(notice_id, status=NoticeStatus.fallback_sent, attempts=Notice.attempts + 1)

    def wrote_recently(self, openid: str) -> bool:
        """Within the 48-hour customer-service window: the customer's last message (Customer row,
        via the directory) or any text the recipient (staff too) sent us (our own push log)."""
        from bot.models import ReceivedPush

        with self.db.transaction() as s:
            pushed = s.execute(select(func.max(ReceivedPush.created_at)).where(
                ReceivedPush.openid == openid, ReceivedPush.dedup_key.like("m:%"))).scalar_one_or_none()
        known = [t for t in (self.directory.last_message_at(openid), pushed) if t is not None]
        return bool(known) and self.clock() - max(known) < SERVICE_WINDOW

    # ------------------------------------------------------------------ the notices table

    def _row(self, event_id: str, planned: Planned) -> tuple[int, str, int | None]:
        where = (Notice.event_id == event_id, Notice.recipient == planned.openid, Notice.kind == planned.kind)
        for _ in range(2):  # a concurrent insert of the same row (expired lease) loses once, then reads
            try:
                with self.db.transaction() as s:
                    row = s.execute(select(Notice).where(*where)).scalar_one_or_none()
                    if row is None:
                        row = Notice(event_id=event_id, recipient=planned.openid, kind=planned.kind,
                                     status=NoticeStatus.queued.value, attempts=0)
                        s.add(row)
                        s.flush()
                    return row.id, row.status, row.msgid
            except IntegrityError:
                continue
        raise RetryableError("notice row contended")

    def _failed(self, notice_id: int, exc: WeChatApiError, status: NoticeStatus | None) -> None:
        changes: dict[str, Any] = {"errcode": exc.errcode, "last_error": str(exc)[:300],
                                   "attempts": Notice.attempts + 1}
        if status is not None:
            changes["status"] = status
        self._mark(notice_id, **changes)

    def _mark(self, notice_id: int, **changes: Any) -> None:
        with self.db.transaction() as s:
            s.execute(update(Notice).where(Notice.id == notice_id).values(updated_at=utcnow(), **changes))


# ------------------------------------------------------------------------- job finish, dead letters


def record_job_finish(db: Database, msgid: str | int, status: str, *, wait: float = JOB_FINISH_WAIT) -> bool:
    """TEMPLATESENDJOBFINISH: ``success`` → delivered, ``failed:…`` → failed. False for a msgid that is
    not ours (waited for briefly: the push can arrive before the worker has marked the row sent)."""
    if not str(msgid).isdigit() or len(str(msgid)) > 20:
        return False
    msgid = int(msgid)
    new = NoticeStatus.delivered if status.strip().lower() == "success" else NoticeStatus.failed
    deadline = time.monotonic() + wait
    while True:
        with db.transaction() as s:
            found = s.execute(select(Notice.id).where(Notice.msgid == msgid)).scalar_one_or_none()
            if found is not None:
                s.execute(update(Notice).where(Notice.id == found, Notice.status == NoticeStatus.sent.value)
                          .values(status=new, updated_at=utcnow(),
                                  last_error=None if new is NoticeStatus.delivered else status[:300]))
                return True
        if time.monotonic() >= deadline:
            log.info("template job finish for an unknown msgid")
            return False
        time.sleep(0.05)


def alert_dead_letters(session: Session, subscriber: str, items: Sequence[Any]) -> None:
    """Relay hook, in the transaction that dead-letters deliveries: one ``delivery.dead`` event each
    (finance is told through the outbox like any notice; a dead alert never raises another)."""
    for item in items:
        payload = item.payload
        if payload.get("type") == DEAD_LETTER_TOPIC:
            continue
        data = {
            "subscriber": subscriber, "event_id": item.event_id, "topic": payload.get("type"),
            "bill_number": (payload.get("bill") or {}).get("number"), "attempts": item.attempts,
            "last_error": getattr(item.error, "detail", None),
        }
        emit(session, DEAD_LETTER_TOPIC, bill=None, data=data)


def init_app(app: Flask) -> None:
    register_subscriber(app, CustomerNotices(app))
    on_dead_letter(app, alert_dead_letters)
