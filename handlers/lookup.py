"""Finding the customer or bill a message refers to."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from handlers.views import PHONE, mask_phone
from payments import services
from payments.errors import BillNotFound, InvalidInput, NotFound
from payments.models import Bill, Customer, Payment


def resolve_customer(session: Session, tokens: Sequence[str]) -> tuple[Customer, list[str]]:
    """``<手机号>``, ``<姓名>`` or ``<姓名> <手机号>`` (the last one creates a new customer)."""
    first, rest = tokens[0], list(tokens[1:])
    if rest and PHONE.match(rest[0]) and not PHONE.match(first):
        return services.find_or_create_customer(session, name=first, phone=rest[0]), rest[1:]
    if PHONE.match(first):
        found = session.execute(
            select(Customer).where(Customer.phone == first).order_by(Customer.id)
        ).scalars().first()
        if found is None:
            raise NotFound(f"没有手机号为 {mask_phone(first)} 的客户。新客户请写上姓名和手机号，"
                           f"例如：张三 {first}")
        return found, rest
    matches = list(session.execute(select(Customer).where(Customer.name == first).limit(3)).scalars())
    if not matches:
        raise NotFound(f"没有找到客户“{first[:20]}”。新客户请写上姓名和手机号，"
                       f"例如：{first[:20]} 13800138000")
    if len(matches) > 1:
        raise InvalidInput(f"有多位客户叫“{first[:20]}”，请改用手机号。")
    return matches[0], rest


def staff_bill(session: Session, number: str, *, lock: bool = False) -> Bill:
    return services.get_bill_by_number(session, number, lock=lock)


def own_bill(session: Session, customer_id: int | None, number: str) -> Bill:
    """A customer's own bill; someone else's bill reads exactly like a bill that does not exist."""
    bill = services.get_bill_by_number(session, number)
    if customer_id is None or bill.customer_id != customer_id:
        raise BillNotFound()
    return bill


def bill_number_of(session: Session, ref: str) -> str:
    """``收据 <编号>`` takes a bill number or a receipt number (``R2611-00001``, ``r261100001``)."""
    raw = "".join(ch for ch in ref.upper() if ch.isalnum())
    if not (len(raw) > 5 and raw[0] == "R" and raw[1:].isdigit()):
        return ref
    receipt_no = f"R{raw[1:5]}-{raw[5:]}"
    number = session.execute(
        select(Bill.number).join(Payment, Payment.bill_id == Bill.id).where(Payment.receipt_no == receipt_no)
    ).scalar_one_or_none()
    return number or ref
