"""PostgreSQL: a fitting payment notification applied by ONE call of the database function
``renopay_apply_fitting_payment`` (migration 0009) — one statement in its own transaction, one round
trip, no unit of work of ours.

It is the notification endpoint's first try on PostgreSQL, for a TRANSACTION.SUCCESS of our merchant
and app: the function locks the bill through the order, answers 'duplicate' when the transaction
was applied already, and otherwise — when the amount is the order's and the bill takes it in full —
writes what payments/applying.py's hot path writes (the attempt, the bill and its seq, the receipt
number, the Payment, the ``payment.succeeded`` event and its deliveries) and records the raw
notification with its outcome. Anything else returns ``None`` having written nothing: the caller
goes the general way (payments/notify.py), which finds and records whatever it is.

What the event says that does not depend on the locked rows — its id, its time, the payment's time,
the subscribers — is decided here, as ``build_event`` decides it; the rest (the bill's webhook view,
the event data) is built by the function, and tests/integration/test_stored_apply.py compares the
two paths row for row and payload for payload.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ARRAY, BigInteger, String, Text, bindparam, cast, func, select
from sqlalchemy.dialects.postgresql import JSON

from db import Database, Prepared, UTCDateTime, china_iso, utcnow
from erp_sync.outbox import Topic, new_event_id, registry
from payments.applying import Outcome, WeChatPaymentFacts
from payments.notifications import RawNotification
from payments.numbers import receipt_counter

FUNCTION = "renopay_apply_fitting_payment"
_ARGUMENTS = (
    ("out_trade_no", String), ("transaction_id", String), ("amount_fen", BigInteger),
    ("payer_openid", String), ("paid_at", UTCDateTime()), ("paid_at_text", String), ("now", UTCDateTime()),
    ("now_text", String), ("counter_name", String), ("receipt_prefix", String), ("event_id", String),
    ("subscribers", String), ("notification_event_id", String), ("notification_event_type", String),
    ("notification_body", Text), ("notification_resource", JSON),
)


def _argument(name: str, type_: Any) -> Any:
    if name == "subscribers":  # an array literal: psycopg's list adaptation inspects every element per call
        return cast(bindparam(name, type_=type_), ARRAY(String))
    return bindparam(name, type_=type_)


_CALL = Prepared(select(
    getattr(func, FUNCTION)(*(_argument(name, type_) for name, type_ in _ARGUMENTS))
    .table_valued("r_outcome", "r_payment_id", "r_receipt_no")
    .render_derived()
))


def _array_literal(names: list[str]) -> str:
    """``{"erp","notices"}``: PostgreSQL's text form of a text array."""
    quoted = ('"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"' for name in names)
    return "{" + ",".join(quoted) + "}"


def apply_in_one_call(db: Database, facts: WeChatPaymentFacts, raw: RawNotification) -> str | None:
    """'applied' or 'duplicate' (committed, raw notification recorded); ``None`` when the general
    path must decide (nothing written). The caller has checked the merchant, the app and the state."""
    now = utcnow()
    counter, prefix = receipt_counter(facts.success_time)
    params: dict[str, Any] = {
        "out_trade_no": facts.out_trade_no,
        "transaction_id": facts.transaction_id,
        "amount_fen": facts.amount_fen,
        "payer_openid": facts.payer_openid,
        "paid_at": facts.success_time,
        "paid_at_text": china_iso(facts.success_time),
        "now": now,
        "now_text": china_iso(now),
        "counter_name": counter,
        "receipt_prefix": prefix,
        "event_id": new_event_id(),
        "subscribers": _array_literal(registry.for_topic(Topic.payment_succeeded.value)),
        "notification_event_id": raw.event_id,
        "notification_event_type": raw.event_type,
        "notification_body": raw.body,
        "notification_resource": raw.resource,
    }
    with db.engine.connect() as connection:  # no SQLAlchemy transaction: the statement is its own
        outcome = _CALL.first(connection, params)[0]
    return None if outcome == "general" else str(Outcome(outcome))
