"""``/wechat``: URL verification and the message/event push in plaintext, compatible and safe mode.

Order of checks for a push: ``signature`` (403, empty body) → body size (413) → XML (400) →
``msg_signature`` and decryption with our appid (403 / 400) → required fields (400) → dedup → router.
Read-only customer messages (the router's ``read_only``) skip the dedup row: they are answered from a
read snapshot (a bare connection of ``Database.read()``'s engine), with no write transaction unless the
48-hour window marker is stale.
Nothing raised past this module: the answer is a 4xx, ``success`` or a reply — never a 5xx.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, Response, current_app, request
from sqlalchemy import Engine
from werkzeug.exceptions import RequestEntityTooLarge

from bot import dedup, notices
from bot.replies import NoReply, ReadAnswer, Reply, TextReply, render
from bot.wire import BadPush, BadSignature, Envelope, Inbound, parse_xml, to_inbound, verify_signature
from config import current_settings
from db import READ_ONLY, Database, current_db

log = logging.getLogger("renopay.bot")

BODY_CAP = 64 * 1024  # real pushes are a few KB
ROUTER_KEY = "renopay.chat.router"
KICKER_KEY = "renopay.chat.tasks"
TASKS_QUEUED = "renopay.chat.tasks_queued"
READ_ENGINE_KEY = "renopay.chat.read_engine"
SYSTEM_BUSY = "系统繁忙，请稍后再发一次。"

bp = Blueprint("wechat", __name__)


def _empty(status: int) -> Response:
    return Response(b"", status=status, mimetype="text/plain")


@bp.get("/wechat")
def verify_url() -> Response:
    args = request.args
    try:
        verify_signature(current_settings().wechat_token, args.get("signature"), args.get("timestamp"),
                         args.get("nonce"))
    except BadSignature:
        return _empty(403)
    return Response(args.get("echostr", ""), mimetype="text/plain")


@bp.post("/wechat")
def receive() -> Response:
    try:
        inbound, encrypted = _read_push()
    except BadSignature:
        return _empty(403)
    except RequestEntityTooLarge:
        return _empty(413)
    except BadPush as exc:
        log.info("rejected push: %s", exc)
        return _empty(400)
    except Exception:  # anything unforeseen in parsing is the sender's problem, never a 5xx
        log.exception("unreadable push")
        return _empty(400)
    try:
        reply_xml = _dispatch(inbound)
    except Exception:  # database down while reading a stored reply: a polite reply, never a 5xx
        log.exception("push dispatch failed")
        reply_xml = _render(TextReply(SYSTEM_BUSY), inbound)
    if reply_xml is None:
        return Response(b"success", mimetype="text/plain")
    if encrypted:
        reply_xml = _envelope().seal(reply_xml, request.args.get("nonce", ""))
    return Response(reply_xml.encode("utf-8"), mimetype="application/xml")


def _envelope() -> Envelope:
    s = current_settings()
    if not s.wechat_encoding_aes_key:
        raise BadPush("encrypted push but no EncodingAESKey configured")
    return Envelope(s.wechat_token, s.wechat_app_id, s.wechat_encoding_aes_key)


def _read_push() -> tuple[Inbound, bool]:
    args = request.args
    timestamp, nonce = args.get("timestamp"), args.get("nonce")
    verify_signature(current_settings().wechat_token, args.get("signature"), timestamp, nonce)
    if (request.content_length or 0) > BODY_CAP:
        raise RequestEntityTooLarge()
    body = request.get_data(cache=False)
    if len(body) > BODY_CAP:
        raise RequestEntityTooLarge()
    doc = parse_xml(body)
    mode = args.get("encrypt_type", "raw").lower()
    if mode not in ("raw", "aes"):
        raise BadPush("unknown encrypt_type")
    encrypted = mode == "aes"
    if encrypted:
        encrypt = doc.get("Encrypt")
        if not isinstance(encrypt, str) or not encrypt.strip():
            raise BadPush("encrypted push without <Encrypt>")
        assert timestamp is not None and nonce is not None  # verified above
        doc = parse_xml(_envelope().open(encrypt.strip(), args.get("msg_signature"), timestamp, nonce))
    inbound = to_inbound(doc)
    original_id = current_settings().wechat_original_id
    if original_id and inbound.to_user != original_id:
        raise BadPush("push addressed to another account")
    return inbound, encrypted


def _render(reply: Reply, inbound: Inbound) -> str | None:
    return render(reply, to_user=inbound.openid, from_user=inbound.to_user, create_time=int(time.time()))


def _follow_up(db: Database, answer: ReadAnswer) -> None:
    if answer.follow_up is None:
        return
    try:
        with db.transaction() as session:
            answer.follow_up(session)
    except Exception:  # bookkeeping only (the 48-hour window marker): the reply still goes out
        log.warning("read-only reply: follow-up write failed", exc_info=True)


def _read_engine(db: Database) -> Engine:
    """The engine behind ``Database.read()`` (same pool; a deferred BEGIN on SQLite, so readers never
    take the write lock), for a bare Core connection: the read-only path starts with one Core statement
    and needs an ORM session only for some commands, so it doesn't pay for a Session on every push."""
    engine: Engine | None = current_app.extensions.get(READ_ENGINE_KEY)
    if engine is None or engine.pool is not db.engine.pool:
        engine = db.engine.execution_options(**{READ_ONLY: True})
        current_app.extensions[READ_ENGINE_KEY] = engine
    return engine


def _dispatch(inbound: Inbound) -> str | None:
    db = current_db()
    if inbound.event == "templatesendjobfinish":  # notice status only: no dedup row, router or 48 h window
        notices.record_job_finish(db, inbound.fields.get("MsgID", ""), inbound.fields.get("Status", ""))
        return None
    router: Any = current_app.extensions.get(ROUTER_KEY)
    read_only = getattr(router, "read_only", None)
    if read_only is not None:
        answer: ReadAnswer | None
        with _read_engine(db).connect() as connection:
            answer = read_only(connection, inbound)
        if answer is not None:
            _follow_up(db, answer)
            return _render(answer.reply, inbound)
    queued = False
    try:
        with db.transaction() as session:
            push_id = dedup.claim(session, inbound.dedup_key, inbound.openid)
            reply: Reply = router(session, inbound) if router is not None else NoReply()
            reply_xml = _render(reply, inbound)
            dedup.finish(session, push_id, reply_xml)
            queued = bool(session.info.pop(TASKS_QUEUED, False))
    except dedup.AlreadyClaimed:
        stored = dedup.wait_for_reply(db, inbound.dedup_key)
        return stored.reply_xml if stored.ready else None
    except Exception:  # rolled back with its claim: nothing happened, WeChat's retry runs it again
        log.exception("chat command failed (%s)", inbound.msg_type)
        return _render(TextReply(SYSTEM_BUSY), inbound)
    if queued and KICKER_KEY in current_app.extensions:
        current_app.extensions[KICKER_KEY].kick()
    return reply_xml
