"""Applying a WeChat payment: what a verified notification (or query) states, the outcomes, and the
hot path — a payment that fits its bill — as a few Core statements built once.

Every paid order goes through here, and on SQLite all of it runs inside the single write lock, so
its cost is the notification throughput. The ORM unit of work (identity map, change tracking, flush
ordering) costs several times the SQL it emits; this path skips it. The model methods still decide
every change — ``PaymentAttempt.succeed`` and ``Bill.apply_payment`` run on transient copies of the
locked rows — and the rows are then written with compare-and-set UPDATEs, so a row that changed
underneath (impossible under the bill lock) fails loudly instead of being overwritten.

Anything unusual (unknown order, a duplicate, a wrong amount, a bill that no longer takes money, an
overpayment) returns ``None`` from ``apply_fitting_payment``, and the general path in
payments/collect.py handles it with the ORM.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, exists, insert, select, update
from sqlalchemy.orm import Session

from db import CHINA_TZ, Prepared, session_connection, utcnow
from erp_sync.outbox import Topic, emit
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
from payments.numbers import next_receipt_number


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


@dataclass(frozen=True)
class PaymentResult:
    outcome: Outcome
    payment: Payment | None = None  # on the hot path: a detached copy of the row written
    anomaly: PaymentAnomaly | None = None


def payment_view(payment: Payment, attempt: PaymentAttempt | None = None) -> dict[str, Any]:
    return {
        "receipt_no": payment.receipt_no,
        "method": str(payment.method),
        "amount_fen": payment.amount_fen,
        "applied_fen": payment.applied_fen,
        "transaction_id": payment.transaction_id,
        "out_trade_no": attempt.out_trade_no if attempt else None,
        "paid_at": payment.paid_at.astimezone(CHINA_TZ).isoformat(timespec="seconds"),
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
_PAYMENT_COLUMNS = tuple(c.key for c in _PAYMENTS.c if c.key != "id")
_INSERT_PAYMENT = Prepared(insert(_PAYMENTS).returning(_PAYMENTS.c.id), columns=_PAYMENT_COLUMNS)
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
        _ATTEMPTS.c.bill_id == bindparam("paid_bill_id"),
        _ATTEMPTS.c.status == AttemptStatus.pending,
        _ATTEMPTS.c.id != bindparam("paid_attempt_id"),
    )
    .values(status=AttemptStatus.closed, closed_at=bindparam("now"), close_reason="bill_paid")
)


class ConcurrentChange(RuntimeError):
    """A compare-and-set UPDATE matched no row: the row changed although we held the bill lock."""


def apply_fitting_payment(session: Session, facts: WeChatPaymentFacts) -> PaymentResult | None:
    """Apply a payment of exactly its order's amount, which the bill can take in full; ``None``
    when it is anything else (the caller's general path decides). The merchant and appid have been
    checked by the caller."""
    order = {"out_trade_no": facts.out_trade_no}
    conn = session_connection(session)
    locked = _LOCK_BILL.first(conn, order)
    if locked is None:
        return None
    current = _ATTEMPT_AND_PAID.first(conn, {**order, "transaction_id": facts.transaction_id})
    if current is None:  # cannot happen under the lock (the row was just joined); the general path decides
        return None
    if current.paid_id is not None:
        return PaymentResult(Outcome.duplicate)
    fields = locked._asdict()
    customer = Customer(**{name: fields.pop(f"customer_{name}") for name in _CUSTOMER_FIELDS})
    bill = Bill(**fields, customer=customer)  # transient copies: never added to the session
    attempt = PaymentAttempt(
        id=current.id, out_trade_no=facts.out_trade_no, status=current.status, amount_fen=current.amount_fen
    )
    fits = bill.status in PAYABLE and facts.amount_fen <= bill.outstanding_fen
    if facts.amount_fen != attempt.amount_fen or attempt.status not in _SUCCEEDABLE or not fits:
        return None

    late, from_status = attempt.status is AttemptStatus.closed, attempt.status
    attempt.succeed()
    _write_one(_SUCCEED_ATTEMPT.rowcount(conn, {"attempt_id": attempt.id, "from_status": from_status}))
    bill.apply_payment(facts.amount_fen)
    now, from_seq = utcnow(), bill.seq
    settled = {"locked_bill_id": bill.id, "from_seq": from_seq, "new_paid_fen": bill.paid_fen,
               "new_status": bill.status, "new_seq": from_seq + 1, "now": now}  # the event's seq, below
    _write_one(_SETTLE_BILL.rowcount(conn, settled))
    if bill.status is BillStatus.paid and current.others_pending:
        _CLOSE_OTHER_ATTEMPTS.rowcount(conn, {"paid_bill_id": bill.id, "paid_attempt_id": attempt.id,
                                              "now": facts.success_time})
    # The receipt counter is the one row every payment locks (numbers are gapless in commit order):
    # it is bumped last, so concurrent payments of different bills queue on it only for the inserts
    # below and the commit.
    payment = Payment(
        bill_id=bill.id,
        attempt_id=attempt.id,
        method=PaymentMethod.wechat,
        amount_fen=facts.amount_fen,
        excess_fen=0,
        refunded_fen=0,
        transaction_id=facts.transaction_id,
        receipt_no=next_receipt_number(session, facts.success_time),
        payer_openid=facts.payer_openid,
        paid_at=facts.success_time,
        created_at=now,
    )
    row = {column: getattr(payment, column) for column in _PAYMENT_COLUMNS}
    payment.id = _INSERT_PAYMENT.scalar(conn, row)
    data = payment_data(bill, payment, attempt, late)
    emit(session, Topic.payment_succeeded, bill=bill, data=data, now=now)  # bumps bill.seq
    if bill.seq != from_seq + 1:
        raise ConcurrentChange("the event's seq is not the one written to the bill")
    if session.identity_map:  # objects the caller loaded earlier no longer match their rows
        session.expire_all()
    return PaymentResult(Outcome.applied, payment)


def _write_one(rowcount: int) -> None:
    if rowcount != 1:
        raise ConcurrentChange("a locked row changed underneath the payment being applied")
