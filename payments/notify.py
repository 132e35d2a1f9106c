"""``POST /payments/wechatpay/notify`` and ``/refund-notify``: WeChat Pay's callbacks.

Pipeline: verify (signature, |now − timestamp| < 300 s, no SIGNTEST) → store the raw notification
(dedup by event id) → apply under the bill's row lock, idempotently → answer. Answers (ARCHITECTURE,
"Behaviour at the edges"): unverifiable → 401 ``{"code":"FAIL",…}``; verified but not applicable
(unknown order, amount or merchant mismatch) → 200 after recording the anomaly; applied or already
applied → 204; unknown event types → 204 and a log line; our own failure → 500 so WeChat retries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy.orm import Session

import observability
from db import Database, current_db, utcnow
from payments import services
from payments.errors import DomainError
from payments.models import RefundStatus
from payments.notifications import RawNotification, mark_processed, record_processed, store_notification
from payments.refund_results import settle_refund
from payments.runtime import gateway
from payments.stored_apply import apply_in_one_call
from payments.wechatpay import Callback, CallbackRejected, WeChatPayGateway, parse_time
from payments.writer import apply_via_writer

log = logging.getLogger("renopay.payments.notify")
bp = Blueprint("wechatpay_notify", __name__, url_prefix="/payments/wechatpay")

NO_CONTENT, NOT_APPLICABLE = 204, 200
Apply = Callable[[Session, Mapping[str, Any]], str]  # what a notification's resource does to our books
OUTCOME_STATUS = {
    "applied": NO_CONTENT,
    "duplicate": NO_CONTENT,
    "anomaly": NOT_APPLICABLE,
    "ignored": NOT_APPLICABLE,
}
REFUND_STATUS = {
    "REFUND.SUCCESS": RefundStatus.succeeded,
    "REFUND.CLOSED": RefundStatus.closed,
    "REFUND.ABNORMAL": RefundStatus.abnormal,
}


def _fail(status: int, message: str) -> Response:
    response = jsonify({"code": "FAIL", "message": message})
    response.status_code = status
    return response


def _answer(outcome: str) -> Response:
    return Response(status=OUTCOME_STATUS.get(outcome, NO_CONTENT))


def facts_from(resource: Mapping[str, Any]) -> services.WeChatPaymentFacts:
    amount = resource.get("amount") or {}
    success = parse_time(resource.get("success_time")) or utcnow()
    return services.WeChatPaymentFacts(
        out_trade_no=str(resource["out_trade_no"]),
        transaction_id=str(resource["transaction_id"]),
        amount_fen=int(amount["total"]),
        appid=str(resource.get("appid", "")),
        mchid=str(resource.get("mchid", "")),
        success_time=success,
        payer_openid=(resource.get("payer") or {}).get("openid"),
        trade_type=resource.get("trade_type"),
    )


def _process(
    db: Database,
    callback: Callback,
    body: str,
    channel: str,
    reference: str | None,
    apply: Apply,
    *,
    idempotent: bool = False,
    elsewhere: Callable[[RawNotification], str | None] | None = None,
) -> str:
    """Store the raw notification and apply it in ONE transaction (one commit on the hot path).

    A redelivery is answered with the first outcome: looked up by event id before applying, or,
    for an ``idempotent`` apply (a payment: once per transaction_id, under the bill lock), by
    applying again, which finds the earlier result; its raw row is then written with its outcome
    in a single statement — by the ``elsewhere`` process when it takes it (the payment writer,
    payments/writer.py; ``None``: it did not), otherwise here. If applying fails, the raw
    notification is still stored, unprocessed, before the error makes us answer 500 (WeChat
    retries, and finance can see what arrived)."""
    resource = dict(callback.resource)
    raw = RawNotification(callback.event_id, callback.event_type, channel, reference, body, resource)
    try:
        if idempotent:
            outcome = elsewhere(raw) if elsewhere is not None else None
            if outcome is not None:
                return outcome
            return db.batched(_unit(raw, apply))
        with db.transaction() as session:
            earlier = store_notification(session, raw)
            if earlier is not None:
                return "duplicate" if earlier == "applied" else earlier
            outcome = apply(session, resource)
            mark_processed(session, callback.event_id, outcome)
            return outcome
    except Exception:
        with db.transaction() as session:
            store_notification(session, raw)
        raise


def _unit(raw: RawNotification, apply: Apply) -> Callable[[Session], str]:
    """A notification's unit of work: applied, and its raw row stored with the outcome."""
    return lambda session: _apply_and_record(session, raw, apply)


def _apply_and_record(session: Session, raw: RawNotification, apply: Apply) -> str:
    outcome = apply(session, raw.resource)
    record_processed(session, raw, outcome)
    return outcome


def apply_transaction(db: Database, gw: WeChatPayGateway, callback: Callback, body: str) -> str:
    """TRANSACTION.SUCCESS → applied | duplicate | anomaly (| ignored for a non-SUCCESS state).

    On PostgreSQL a payment of our merchant and app goes first to the database function that applies
    a fitting payment in one call (payments/stored_apply.py); whatever it leaves goes the general way."""
    if not db.is_sqlite:
        outcome = _apply_in_one_call(db, gw, callback, body)
        if outcome is not None:
            return outcome
    return apply_transaction_generally(db, gw, callback, body)


def _apply_in_one_call(db: Database, gw: WeChatPayGateway, callback: Callback, body: str) -> str | None:
    resource = callback.resource
    if (resource.get("trade_state", "SUCCESS") != "SUCCESS" or resource.get("appid") != gw.appid
            or resource.get("mchid") != gw.mchid):
        return None
    try:
        facts = facts_from(resource)
    except (KeyError, TypeError, ValueError):  # malformed: the general path records and answers it
        return None
    raw = RawNotification(callback.event_id, callback.event_type, "payment", facts.out_trade_no, body,
                          dict(resource))
    try:
        return apply_in_one_call(db, facts, raw)
    except Exception as exc:  # one statement: it wrote nothing; the general path decides, and stores it
        reason = getattr(exc, "orig", None) or exc  # the database's message, not the parameters
        log.warning("one-call apply of %s failed (%s: %s); going the general way", callback.event_id,
                    type(exc).__name__, str(reason).splitlines()[0] if str(reason) else "")
        return None


def payment_apply(appid: str, mchid: str) -> Apply:
    """What a TRANSACTION notification does to our books (for our merchant and app)."""

    def apply(session: Session, resource: Mapping[str, Any]) -> str:
        if resource.get("trade_state", "SUCCESS") != "SUCCESS":
            return "ignored"
        result = services.apply_wechat_payment(session, facts_from(resource), appid=appid, mchid=mchid)
        return str(result.outcome)

    return apply


def payment_unit(raw: RawNotification, appid: str, mchid: str) -> Callable[[Session], str]:
    """A payment notification's unit of work — applied, and its raw row stored with the outcome —
    as the payment writer runs it (payments/writer.py); the endpoint runs the same in-process."""
    return _unit(raw, payment_apply(appid, mchid))


def apply_transaction_generally(db: Database, gw: WeChatPayGateway, callback: Callback, body: str) -> str:
    """The notification in a unit of work of ours: the raw notification stored with what
    ``services.apply_wechat_payment`` did (SQLite always, through the payment writer when gunicorn
    runs one; on PostgreSQL what the one call left)."""
    database = db.file  # a SQLite file (None on PostgreSQL or in memory)

    def elsewhere(raw: RawNotification) -> str | None:
        return apply_via_writer(database, raw, gw.appid, gw.mchid) if database else None

    reference = callback.resource.get("out_trade_no")
    return _process(db, callback, body, "payment", reference, payment_apply(gw.appid, gw.mchid),
                    idempotent=True, elsewhere=elsewhere)


def apply_refund(db: Database, gw: WeChatPayGateway, callback: Callback, body: str) -> str:
    """REFUND.SUCCESS / CLOSED / ABNORMAL → applied | anomaly (unknown refund, impossible transition)."""
    out_refund_no = str(callback.resource.get("out_refund_no", ""))

    def apply(session: Session, resource: Mapping[str, Any]) -> str:
        if resource.get("mchid") != gw.mchid:
            return "anomaly"
        try:
            with session.begin_nested():  # a refused transition leaves nothing half-written
                settle_refund(  # ABNORMAL also tells finance what to do next
                    session,
                    out_refund_no,
                    status=REFUND_STATUS[callback.event_type],
                    refund_id=resource.get("refund_id"),
                    error=resource.get("refund_status"),
                )
        except DomainError as exc:
            log.warning("refund notification %s not applicable: %s", out_refund_no, exc.code)
            return "anomaly"
        return "applied"

    return _process(db, callback, body, "refund", out_refund_no, apply)


Handler = Callable[[Database, WeChatPayGateway, Callback, str], str]
PAYMENT_EVENTS: dict[str, Handler] = {"TRANSACTION.SUCCESS": apply_transaction}
REFUND_EVENTS: dict[str, Handler] = {name: apply_refund for name in REFUND_STATUS}


def _count(outcome: str) -> None:
    """/metrics: notifications by endpoint and outcome (applied, duplicate, anomaly, rejected, error…)."""
    observability.inc("renopay_wechatpay_notifications_total", endpoint=request.path.rsplit("/", 1)[-1],
                      outcome=outcome)


def _receive(handlers: Mapping[str, Handler]) -> Response:
    gw = gateway()
    raw = request.get_data()
    try:
        callback = gw.verify_and_decrypt(dict(request.headers), raw)
    except CallbackRejected as exc:
        log.warning("rejected WeChat Pay callback: %s", exc)
        _count("rejected")
        return _fail(401, "签名验证失败")
    handler = handlers.get(callback.event_type)
    if handler is None:
        log.info("ignored WeChat Pay event %s (%s)", callback.event_type, callback.event_id)
        _count("unknown_event")
        return Response(status=NO_CONTENT)
    try:
        outcome = handler(current_db(), gw, callback, raw.decode("utf-8"))
    except Exception:  # anything unexpected: WeChat must retry, never lose the notification
        log.exception("WeChat Pay callback %s could not be processed", callback.event_id)
        _count("error")
        return _fail(500, "处理失败，请重试")
    _count(outcome)
    return _answer(outcome)


@bp.post("/notify")
def notify() -> Response:
    return _receive(PAYMENT_EVENTS)


@bp.post("/refund-notify")
def refund_notify() -> Response:
    return _receive(REFUND_EVENTS)
