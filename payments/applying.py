"""Applying a WeChat payment: what a verified notification (or query) states, the outcomes, and the
hot path — a payment that fits its bill — as a few Core statements built once.

Every paid order goes through here, and on SQLite all of it runs inside the single write lock, so
its cost is the notification throughput. The ORM unit of work (identity map, change tracking, flush
ordering) costs several times the SQL it emits; this path skips it. The model methods still decide
every change — ``PaymentAttempt.succeed`` and ``Bill.apply_payment`` run on transient copies of the
locked rows — and the rows are then written with compare-and-set UPDATEs, so a row that changed
underneath (impossible under the bill lock) fails loudly instead of being overwritten.

(On PostgreSQL the notification endpoint first tries one call of a database function that does the
same, see payments/stored_apply.py; this path serves recovery, and the endpoint when that call fails.)
On PostgreSQL it takes two round trips (``db.pipeline``): BEGIN with the bill lock and the reads;
then every write in ONE statement of data-modifying CTEs (``_write_in_one_statement``: the
compare-and-set UPDATEs, whose miss fails the statement; the receipt counter's bump; the payment and
its event numbered from it in SQL; the deliveries) with the caller's last statements and the COMMIT.
The counter row, which every payment locks until its transaction ends, is therefore held only while
the database runs that last batch. On SQLite, in-process and inside the write lock, the same writes
run as statements of their own (``_write_in_turn``); tests run both against the general path.

Anything unusual (unknown order, a duplicate, a wrong amount, a bill that no longer takes money, an
overpayment) returns ``None`` from ``apply_fitting_payment``, and the general path in
payments/collect.py handles it with the ORM.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import secrets
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    Connection,
    Integer,
    String,
    Table,
    Text,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session

from db import JSONText, Pending, Prepared, china_iso, loaded_copy, pipeline, session_connection, utcnow
from erp_sync.outbox import OutboxEvent, Topic, build_event, fan_out_statement, insert_deliveries
from payments.bills import bill_event_data
from payments.models import (
    PAYABLE,
    AttemptStatus,
    Bill,
    BillStatus,
    Customer,
    Payment,
    PaymentAnomaly,
    PaymentAttempt,
    PaymentMethod,
)
from payments.numbers import bump as bump_counter
from payments.numbers import bump_statement, counted_receipt_number, receipt_counter, receipt_number


class Outcome(enum.StrEnum):
    applied = "applied"
    duplicate = "duplicate"
    anomaly = "anomaly"


@dataclass(frozen=True)
class WeChatPaymentFacts:
    """What a verified, decrypted WeChat notification (or query) says about a paid order."""

    out_trade_no: str
    transaction_id: str
    amount_fen: int
    appid: str
    mchid: str
    success_time: dt.datetime
    payer_openid: str | None = None
    trade_type: str | None = None


class PaymentResult:
    """What applying did: the outcome, the Payment written (on the hot path, a detached copy of its
    row) and the anomaly recorded, if any."""

    __slots__ = ("_numbered", "_payment", "anomaly", "outcome")

    def __init__(
        self,
        outcome: Outcome,
        payment: Payment | None = None,
        anomaly: PaymentAnomaly | None = None,
        *,
        numbered: Pending | None = None,
    ) -> None:
        self.outcome, self._payment, self.anomaly = outcome, payment, anomaly
        self._numbered = numbered  # the hot path's INSERT … RETURNING id, receipt_no, read when asked for

    @property
    def payment(self) -> Payment | None:
        if self._numbered is not None and self._payment is not None:
            self._payment.id, self._payment.receipt_no = self._numbered.first()
            self._numbered = None
        return self._payment

    def __repr__(self) -> str:
        return f"PaymentResult({self.outcome!s}, payment={self._payment!r}, anomaly={self.anomaly!r})"


def payment_view(payment: Payment, attempt: PaymentAttempt | None = None) -> dict[str, Any]:
    return {
        "receipt_no": payment.receipt_no,
        "method": str(payment.method),
        "amount_fen": payment.amount_fen,
        "applied_fen": payment.applied_fen,
        "transaction_id": payment.transaction_id,
        "out_trade_no": attempt.out_trade_no if attempt else None,
        "paid_at": china_iso(payment.paid_at),
        "note": payment.note,
    }


def payment_data(bill: Bill, payment: Payment, attempt: PaymentAttempt | None, late: bool) -> dict[str, Any]:
    """The ``data`` of a ``payment.succeeded`` event."""
    return bill_event_data(bill, payment=payment_view(payment, attempt), late=late)


_BILLS = cast(Table, Bill.__table__)
_ATTEMPTS = cast(Table, PaymentAttempt.__table__)
_PAYMENTS = cast(Table, Payment.__table__)
_CUSTOMERS = cast(Table, Customer.__table__)
_CUSTOMER_FIELDS = ("name", "erp_ref", "openid")

# The bill (with what its events say about the customer), locked through the order number: FOR
# UPDATE OF bills on PostgreSQL; SQLite is already serialised by BEGIN IMMEDIATE.
_LOCK_BILL = Prepared(
    select(*_BILLS.c, *(_CUSTOMERS.c[name].label(f"customer_{name}") for name in _CUSTOMER_FIELDS))
    .select_from(
        _ATTEMPTS.join(_BILLS, _BILLS.c.id == _ATTEMPTS.c.bill_id).join(
            _CUSTOMERS, _CUSTOMERS.c.id == _BILLS.c.customer_id
        )
    )
    .where(_ATTEMPTS.c.out_trade_no == bindparam("out_trade_no"))
    .with_for_update(of=_BILLS)
)
# Read after the lock is held (a new snapshot on PostgreSQL): the attempt as it is now, whether
# this WeChat transaction was already applied by a concurrent delivery that committed first, and
# whether the bill has other pending orders (to close if this payment settles it).
_OTHERS = _ATTEMPTS.alias("others")
_ATTEMPT_AND_PAID = Prepared(select(
    _ATTEMPTS.c.id,
    _ATTEMPTS.c.status,
    _ATTEMPTS.c.amount_fen,
    select(_PAYMENTS.c.id)
    .where(_PAYMENTS.c.transaction_id == bindparam("transaction_id"))
    .scalar_subquery()
    .label("paid_id"),
    exists()
    .where(
        _OTHERS.c.bill_id == _ATTEMPTS.c.bill_id,
        _OTHERS.c.status == AttemptStatus.pending,
        _OTHERS.c.id != _ATTEMPTS.c.id,
    )
    .label("others_pending"),
).where(_ATTEMPTS.c.out_trade_no == bindparam("out_trade_no")))
# The payment and its event take their receipt number from the counter the same transaction bumped
# just before (``counted_receipt_number``): the three statements go out together, the counter's
# row lock is taken only then and held to the COMMIT that follows at once, so concurrent payments
# queue on it for as little as the database takes (not for a round trip and our Python between).
# The event's payload is serialised with a one-off placeholder where the number goes.
_PAYMENT_COLUMNS = tuple(c.key for c in _PAYMENTS.c if c.key not in ("id", "receipt_no"))
_INSERT_PAYMENT = Prepared(
    insert(_PAYMENTS)
    .values(receipt_no=counted_receipt_number())
    .returning(_PAYMENTS.c.id, _PAYMENTS.c.receipt_no),
    columns=_PAYMENT_COLUMNS,
)
_EVENTS = cast(Table, OutboxEvent.__table__)
_EVENT_FIELDS = ("id", "topic", "bill_id", "seq", "created_at")  # and the payload, numbered in SQL
_INSERT_PAYMENT_EVENT = Prepared(
    insert(_EVENTS).values(
        payload=JSONText(
            func.replace(
                bindparam("payload_text", type_=Text),
                bindparam("placeholder", type_=String),
                counted_receipt_number(),
            )
        )
    ),
    columns=_EVENT_FIELDS,
)
_SUCCEEDABLE = (AttemptStatus.pending, AttemptStatus.closed)
_SUCCEED_ATTEMPT = Prepared(
    update(_ATTEMPTS)
    .where(_ATTEMPTS.c.id == bindparam("attempt_id"), _ATTEMPTS.c.status == bindparam("from_status"))
    .values(status=AttemptStatus.succeeded, next_check_at=None)
)
_SETTLE_BILL = Prepared(
    update(_BILLS)
    .where(_BILLS.c.id == bindparam("locked_bill_id"), _BILLS.c.seq == bindparam("from_seq"))
    .values(
        paid_fen=bindparam("new_paid_fen"),
        status=bindparam("new_status"),
        seq=bindparam("new_seq"),
        updated_at=bindparam("now"),
    )
)
# A paid bill takes no more money: its other pending orders are closed here (the recovery job
# closes them at WeChat; a payment that still lands on one is healed as a late payment).
_CLOSE_OTHER_ATTEMPTS = Prepared(
    update(_ATTEMPTS)
    .where(
        _ATTEMPTS.c.bill_id == bindparam("locked_bill_id"),
        _ATTEMPTS.c.status == AttemptStatus.pending,
        _ATTEMPTS.c.id != bindparam("attempt_id"),
    )
    .values(status=AttemptStatus.closed, closed_at=bindparam("closed_at"), close_reason="bill_paid")
)


_CHANGED_UNDERNEATH = "{what} changed underneath the payment being applied; rows: "


def _exactly_one_row(changed: Any, what: str) -> Any:
    """True when the data-modifying CTE ``changed`` wrote exactly one row; otherwise the statement
    fails (a text that is no integer: SQL has no RAISE), and with it the transaction."""
    rows = func.count()
    message = "renopay: " + _CHANGED_UNDERNEATH.format(what=what)
    error = literal_column(f"'{message}'", String) + sql_cast(rows, String)
    check = select(case((rows == 1, 1), else_=sql_cast(error, Integer))).select_from(changed)
    return check.scalar_subquery() == 1


def _write_in_one_statement() -> Prepared:
    """PostgreSQL: every write of a fitting payment as ONE statement of data-modifying CTEs — the
    compare-and-set UPDATEs, the counter's bump, the payment and its event numbered from it, the
    deliveries — sent with the caller's last statements and the COMMIT. A compare-and-set that
    matches no row fails the statement, so the COMMIT that follows it in the pipeline never commits.
    All parts run on one snapshot; none reads another's rows except through RETURNING (the receipt
    number), and the foreign keys (deliveries → event) are checked when the statement ends.

    Binds: those of the compare-and-set statements above and ``close_others``; ``counter_name`` and
    ``receipt_prefix``; ``payment_<column>``; ``event_<column>``, ``payload_text``, ``placeholder``
    and ``subscribers`` (see ``fan_out_statement``)."""
    succeeded = _SUCCEED_ATTEMPT.statement.returning(_ATTEMPTS.c.id).cte("succeeded")
    settled = _SETTLE_BILL.statement.returning(_BILLS.c.id).cte("settled")
    closed_others = _CLOSE_OTHER_ATTEMPTS.statement.where(bindparam("close_others", type_=Boolean))
    closed = closed_others.returning(_ATTEMPTS.c.id).cte("closed")
    counter = bump_statement("postgresql").cte("counter")
    numbered = (
        select(receipt_number(counter.c.value).label("receipt_no"))
        .select_from(counter)
        .where(_exactly_one_row(succeeded, "the attempt"), _exactly_one_row(settled, "the bill"))
        .cte("numbered")
    )
    payment_values = (bindparam(f"payment_{c}", type_=_PAYMENTS.c[c].type) for c in _PAYMENT_COLUMNS)
    payment = (
        insert(_PAYMENTS)
        .from_select([*_PAYMENT_COLUMNS, "receipt_no"], select(*payment_values, numbered.c.receipt_no))
        .returning(_PAYMENTS.c.id, _PAYMENTS.c.receipt_no)
        .cte("payment")
    )
    event_values = (bindparam(f"event_{c}", type_=_EVENTS.c[c].type) for c in _EVENT_FIELDS)
    payload = JSONText(func.replace(bindparam("payload_text", type_=Text),
                                    bindparam("placeholder", type_=String), numbered.c.receipt_no))
    event = (
        insert(_EVENTS)
        .from_select([*_EVENT_FIELDS, "payload"], select(*event_values, payload).select_from(numbered))
        .cte("event")
    )
    deliveries = fan_out_statement().cte("deliveries")
    ordered = (succeeded, settled, closed, counter, numbered, payment, event, deliveries)  # as referenced
    return Prepared(select(payment.c.id, payment.c.receipt_no).add_cte(*ordered))


_WRITE_AT_ONCE = _write_in_one_statement()


class ConcurrentChange(RuntimeError):
    """A compare-and-set UPDATE matched no row: the row changed although we held the bill lock."""


def apply_fitting_payment(session: Session, facts: WeChatPaymentFacts) -> PaymentResult | None:
    """Apply a payment of exactly its order's amount, which the bill can take in full; ``None``
    when it is anything else (the caller's general path decides). The merchant and appid have been
    checked by the caller."""
    order = {"out_trade_no": facts.out_trade_no}
    conn = session_connection(session)
    with pipeline(conn):  # PostgreSQL: BEGIN, the lock and the read go out in one round trip
        locking = _LOCK_BILL.send(conn, order)
        reading = _ATTEMPT_AND_PAID.send(conn, {**order, "transaction_id": facts.transaction_id})
    locked, current = locking.first(), reading.first()
    if locked is None:
        return None
    if current is None:  # cannot happen under the lock (the row was just joined); the general path decides
        return None
    if current.paid_id is not None:
        return PaymentResult(Outcome.duplicate)
    fields = locked._asdict()
    customer = loaded_copy(Customer, {name: fields.pop(f"customer_{name}") for name in _CUSTOMER_FIELDS})
    bill = loaded_copy(Bill, {**fields, "customer": customer})  # transient copies: never in the session
    attempt = loaded_copy(PaymentAttempt, {"id": current.id, "out_trade_no": facts.out_trade_no,
                                           "status": current.status, "amount_fen": current.amount_fen})
    fits = bill.status in PAYABLE and facts.amount_fen <= bill.outstanding_fen
    if facts.amount_fen != attempt.amount_fen or attempt.status not in _SUCCEEDABLE or not fits:
        return None

    late, from_status = attempt.status is AttemptStatus.closed, attempt.status
    attempt.succeed()
    bill.apply_payment(facts.amount_fen)
    now, from_seq = utcnow(), bill.seq
    counter, prefix = receipt_counter(facts.success_time)
    placeholder = f"__receipt_{secrets.token_hex(16)}__"  # unguessable: no bill text can contain it
    payment = loaded_copy(Payment, {
        "bill_id": bill.id,
        "attempt_id": attempt.id,
        "method": PaymentMethod.wechat,
        "amount_fen": facts.amount_fen,
        "excess_fen": 0,
        "refunded_fen": 0,
        "transaction_id": facts.transaction_id,
        "receipt_no": placeholder,
        "payer_openid": facts.payer_openid,
        "paid_at": facts.success_time,
        "created_at": now,
        "recorded_by_id": None,
        "note": None,
    })
    data = payment_data(bill, payment, attempt, late)
    event, deliveries = build_event(Topic.payment_succeeded, bill=bill, data=data, now=now)  # bumps bill.seq
    if bill.seq != from_seq + 1:
        raise ConcurrentChange("the event's seq is not the one written to the bill")
    writes = {
        "attempt_id": attempt.id, "from_status": from_status,  # compare-and-set: the attempt
        "locked_bill_id": bill.id, "from_seq": from_seq,  # and the bill, with the event's seq
        "new_paid_fen": bill.paid_fen, "new_status": bill.status, "new_seq": bill.seq, "now": now,
        "close_others": bill.status is BillStatus.paid and bool(current.others_pending),
        "closed_at": facts.success_time,
        "counter_name": counter, "receipt_prefix": prefix,
        "payload_text": json.dumps(event["payload"]), "placeholder": placeholder,
    }
    if conn.dialect.name == "postgresql":
        numbered = _write_at_once(conn, writes, payment, event, deliveries)
    else:
        numbered = _write_in_turn(session, conn, writes, payment, event, deliveries)
    if session.identity_map:  # objects the caller loaded earlier no longer match their rows
        session.expire_all()
    return PaymentResult(Outcome.applied, payment, numbered=numbered)


def _write_at_once(conn: Connection, writes: dict[str, Any], payment: Payment, event: dict[str, Any],
                   deliveries: list[dict[str, Any]]) -> Pending:
    """PostgreSQL: one statement, sent with the caller's last statements and the COMMIT."""
    params = {
        **writes,
        **{f"payment_{column}": getattr(payment, column) for column in _PAYMENT_COLUMNS},
        **{f"event_{field}": event[field] for field in _EVENT_FIELDS},
        "subscribers": [delivery["subscriber"] for delivery in deliveries],
    }
    with pipeline(conn, until_commit=True):
        return _WRITE_AT_ONCE.send(conn, params)


def _write_in_turn(session: Session, conn: Connection, writes: dict[str, Any], payment: Payment,
                   event: dict[str, Any], deliveries: list[dict[str, Any]]) -> Pending:
    """SQLite (in-process, inside the write lock): the same writes as statements of their own; the
    compare-and-set counts are checked before anything else is written."""
    _write_one(_SUCCEED_ATTEMPT.rowcount(conn, writes), "the attempt")
    _write_one(_SETTLE_BILL.rowcount(conn, writes), "the bill")
    if writes["close_others"]:
        _CLOSE_OTHER_ATTEMPTS.send(conn, writes)
    bump_counter(session, writes["counter_name"])
    payment_row = writes | {column: getattr(payment, column) for column in _PAYMENT_COLUMNS}
    numbered = _INSERT_PAYMENT.send(conn, payment_row)
    _INSERT_PAYMENT_EVENT.send(conn, writes | event)
    insert_deliveries(conn, deliveries)
    return numbered


def _write_one(rowcount: int, what: str) -> None:
    if rowcount != 1:
        raise ConcurrentChange(_CHANGED_UNDERNEATH.format(what=what) + str(rowcount))
