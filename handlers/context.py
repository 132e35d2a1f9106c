"""Who is writing, and what a command handler gets to work with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.wire import Inbound
from config import Settings
from handlers.models import AuditEntry
from payments.links import Links
from payments.models import Customer, Staff


@dataclass
class Ctx:
    # The unit of work, or how to open one on first use (the read-only path: most answers need none).
    opened: Session | Callable[[], Session]
    inbound: Inbound
    staff: Staff | None
    customer: Customer | None
    # The read-only path knows the sender's customer id without loading the row (``customer`` is None),
    # and their open bills (``customer.OPEN_BILL_COLUMNS``), read with it in the same statement.
    known_customer_id: int | None = None
    open_bills: Sequence[Any] | None = None

    @property
    def session(self) -> Session:
        if not isinstance(self.opened, Session):
            self.opened = self.opened()
        return self.opened

    @property
    def openid(self) -> str:
        return self.inbound.openid

    @property
    def customer_id(self) -> int | None:
        """The sender's customer id: from the loaded row, or as the read-only path found it."""
        return self.customer.id if self.customer is not None else self.known_customer_id

    @property
    def links(self) -> Links:
        links: Links = current_app.extensions["renopay.links"]
        return links

    @property
    def settings(self) -> Settings:
        settings: Settings = current_app.extensions["renopay.settings"]
        return settings

    def require_staff(self) -> Staff:
        assert self.staff is not None, "staff command routed to a non-staff sender"
        return self.staff

    def audit(self, command: str, outcome: str, **detail: Any) -> None:
        self.session.add(AuditEntry(
            openid=self.openid, staff_id=self.staff.id if self.staff else None, command=command,
            text=self.inbound.content[:500], outcome=outcome, detail=detail,
        ))


def identify(session: Session, inbound: Inbound) -> Ctx:
    staff = session.execute(
        select(Staff).where(Staff.openid == inbound.openid, Staff.active.is_(True))
    ).scalar_one_or_none()
    customer = session.execute(select(Customer).where(Customer.openid == inbound.openid)).scalar_one_or_none()
    return Ctx(session, inbound, staff, customer)
