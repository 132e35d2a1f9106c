"""Use cases of a bill's life: customers, issuing, opening, cancelling, voiding, reminding.

Every function takes the caller's session and plain values; the caller owns the transaction.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import utcnow
from erp_sync.outbox import Topic, emit
from payments.errors import BillNotFound, IllegalTransition, InvalidAmount, InvalidInput
from payments.models import STAGES, AttemptStatus, Bill, BillSource, BillStatus, Customer
from payments.numbers import next_bill_number, normalise_bill_number


def lock_bill(session: Session, bill_id: int) -> Bill:
    """Load a bill with a row lock (FOR UPDATE on PostgreSQL; SQLite is serialised by BEGIN IMMEDIATE)."""
    bill = session.execute(
        select(Bill)
        .where(Bill.id == bill_id)
        .with_for_update(of=Bill)
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if bill is None:
        raise BillNotFound()
    return bill


def get_bill_by_number(session: Session, number: str, *, lock: bool = False) -> Bill:
    bill_id = session.execute(
        select(Bill.id).where(Bill.number == normalise_bill_number(number))
    ).scalar_one_or_none()
    if bill_id is None:
        raise BillNotFound()
    return lock_bill(session, bill_id) if lock else session.get_one(Bill, bill_id)


def find_or_create_customer(
    session: Session, *, name: str, phone: str | None = None, erp_ref: str | None = None
) -> Customer:
    """Match by ERP reference first, then by phone; otherwise create."""
    name = name.strip()
    if not name or len(name) > 64:
        raise InvalidInput("客户姓名不能为空，且不超过 64 个字")
    customer = None
    if erp_ref:
        customer = session.execute(select(Customer).where(Customer.erp_ref == erp_ref)).scalar_one_or_none()
    if customer is None and phone:
        customer = session.execute(
            select(Customer).where(Customer.phone == phone).order_by(Customer.id)
        ).scalars().first()
        if customer is not None and erp_ref and customer.erp_ref is None:
            customer.erp_ref = erp_ref
    if customer is None:
        customer = Customer(name=name, phone=phone, erp_ref=erp_ref)
        session.add(customer)
        session.flush()
    return customer


def issue_bill(
    session: Session,
    *,
    customer: Customer,
    amount_fen: int,
    title: str,
    stage: str = "其他",
    source: BillSource,
    max_fen: int,
    contract_no: str | None = None,
    due_date: dt.date | None = None,
    issued_by_id: int | None = None,
    erp_ref: str | None = None,
    request_hash: str | None = None,
    open_now: bool = False,
    now: dt.datetime | None = None,
) -> Bill:
    """Create a bill: a draft awaiting confirmation (chat) or open at once (ERP API)."""
    now = now or utcnow()
    if not isinstance(amount_fen, int) or isinstance(amount_fen, bool) or amount_fen <= 0:
        raise InvalidAmount("金额必须是大于 0 的整数（分）")
    if amount_fen > max_fen:
        raise InvalidAmount("金额超过单笔账单上限")
    if stage not in STAGES:
        raise InvalidInput(f"阶段只能是：{'、'.join(STAGES)}")
    title = (title or stage).strip()
    if not title or len(title) > 100:
        raise InvalidInput("账单说明不能为空，且不超过 100 个字")
    bill = Bill(
        number=next_bill_number(session, now),
        customer=customer,
        customer_id=customer.id,
        title=title,
        stage=stage,
        contract_no=contract_no,
        amount_fen=amount_fen,
        paid_fen=0,
        refunded_fen=0,
        status=BillStatus.draft,
        due_date=due_date,
        issued_by_id=issued_by_id,
        source=source,
        erp_ref=erp_ref,
        request_hash=request_hash,
        seq=0,
        created_at=now,
    )
    session.add(bill)
    session.flush()
    if open_now:
        _open(session, bill, now)
    return bill


def _customer_view(customer: Customer) -> dict[str, Any]:
    return {"name": customer.name, "erp_ref": customer.erp_ref, "openid": customer.openid}


def bill_event_data(bill: Bill, **extra: Any) -> dict[str, Any]:
    return {
        "title": bill.title,
        "outstanding_fen": bill.outstanding_fen,
        "due_date": bill.due_date.isoformat() if bill.due_date else None,
        "issued_by_id": bill.issued_by_id,
        "customer": _customer_view(bill.customer),
        **extra,
    }


def _open(session: Session, bill: Bill, now: dt.datetime) -> None:
    bill.open(now)
    emit(session, Topic.bill_opened, bill=bill, data=bill_event_data(bill), now=now)


def open_bill(session: Session, bill_id: int, *, now: dt.datetime | None = None) -> Bill:
    bill = lock_bill(session, bill_id)
    _open(session, bill, now or utcnow())
    return bill


def cancel_draft(session: Session, bill_id: int) -> Bill:
    bill = lock_bill(session, bill_id)
    bill.cancel_draft()
    return bill


def void_bill(session: Session, bill_id: int, *, reason: str, now: dt.datetime | None = None) -> Bill:
    """Void an open bill with nothing paid. Its pending WeChat orders are closed here and at WeChat
    by the recovery job (``remote_closed`` stays false until WeChat confirms)."""
    now = now or utcnow()
    reason = reason.strip()
    if not reason:
        raise InvalidInput("请说明作废原因")
    bill = lock_bill(session, bill_id)
    bill.void(reason[:200])
    for attempt in bill.attempts:
        if attempt.status is AttemptStatus.pending:
            attempt.close(now, "bill_voided")
    emit(session, Topic.bill_voided, bill=bill, data=bill_event_data(bill, reason=reason[:200]), now=now)
    return bill


def remind_bill(session: Session, bill_id: int, *, today: dt.date, now: dt.datetime | None = None) -> Bill:
    """Queue a payment reminder notice; at most one per bill per day."""
    bill = lock_bill(session, bill_id)
    if bill.status not in (BillStatus.open, BillStatus.partially_paid):
        raise IllegalTransition(f"账单 {bill.number} 无需催款")
    if bill.last_reminded_on == today:
        raise IllegalTransition(f"账单 {bill.number} 今天已经催过款了，明天再试")
    bill.last_reminded_on = today
    emit(session, Topic.bill_reminded, bill=bill, data=bill_event_data(bill), now=now)
    return bill
