"""Demo data for sandbox mode: two staff members and two customers bound to simulated WeChat users,
and a few bills in different states — created through the payments services, so their outbox
events (and the ERP pushes and notices that follow) exist exactly as in real use.

Idempotent: seeds only a database without bills. Runs when the sandbox server starts
(``flask run`` / ``make run``) and on demand: ``flask --app app sandbox seed``.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import click
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from db import Database, utcnow
from payments import services
from payments.models import Bill, BillSource, Customer, PaymentMethod, Staff, StaffRole

log = logging.getLogger("renopay.sandbox.seed")


@dataclass(frozen=True)
class Person:
    openid: str
    name: str
    phone: str = ""
    role: StaffRole | None = None


FINANCE = Person("oSandbox-Finance-Wang", "王会计", role=StaffRole.finance)
SALES = Person("oSandbox-Sales-Li", "李销售", role=StaffRole.sales)
ZHANG = Person("oSandbox-Customer-Zhang", "张三", "13800138000")
CHEN = Person("oSandbox-Customer-Chen", "陈女士", "13900139000")
PEOPLE = (FINANCE, SALES, ZHANG, CHEN)


def seed(db: Database, max_fen: int, *, now: dt.datetime | None = None) -> bool:
    """Create the demo data unless the database already has bills. True when it seeded."""
    now = now or utcnow()
    with db.transaction() as s:
        if s.scalar(select(func.count()).select_from(Bill)):
            return False
        finance, sales = _staff(s, FINANCE), _staff(s, SALES)
        zhang, chen = _customer(s, ZHANG), _customer(s, CHEN)
        due = (now + dt.timedelta(days=14)).date()
        _bill(s, zhang, sales, 3_800_000, "水电改造 首期款", "首期款", max_fen, due)
        partly = _bill(s, chen, sales, 6_000_000, "泥瓦工程 中期款", "中期款", max_fen, due)
        services.record_offline_payment(s, partly.id, amount_fen=2_000_000, method=PaymentMethod.transfer,
                                        staff_id=finance.id, note="工行转账 尾号6688")
        paid = _bill(s, zhang, sales, 500_000, "设计定金", "定金", max_fen, None)
        services.record_offline_payment(s, paid.id, amount_fen=500_000, method=PaymentMethod.cash,
                                        staff_id=finance.id, note="现场现金")
    return True


def _staff(s: Session, person: Person) -> Staff:
    assert person.role is not None
    staff = Staff(name=person.name, role=person.role, openid=person.openid, active=True)
    s.add(staff)
    s.flush()
    return staff


def _customer(s: Session, person: Person) -> Customer:
    customer = services.find_or_create_customer(s, name=person.name, phone=person.phone)
    customer.openid = person.openid
    s.flush()
    return customer


def _bill(s: Session, customer: Customer, staff: Staff, amount_fen: int, title: str, stage: str,
          max_fen: int, due: dt.date | None) -> Bill:
    return services.issue_bill(
        s, customer=customer, amount_fen=amount_fen, title=title, stage=stage, source=BillSource.chat,
        max_fen=max_fen, due_date=due, issued_by_id=staff.id, open_now=True,
    )


def seed_app(app: Flask) -> bool:
    """Seed the app's database; a database that is not migrated yet is left alone (logged)."""
    settings = app.extensions["renopay.settings"]
    try:
        seeded = seed(app.extensions["renopay.db"], settings.max_bill_fen)
    except SQLAlchemyError as exc:
        log.warning("sandbox seed skipped: %s (run `flask --app app db upgrade`)", type(exc).__name__)
        return False
    if seeded:
        log.info("sandbox: demo data seeded (2 staff, 2 customers, 3 bills)")
    return seeded


def register_cli(app: Flask) -> None:
    @app.cli.group("sandbox")
    def sandbox_group() -> None:
        """Sandbox mode helpers."""

    @sandbox_group.command("seed")
    def seed_command() -> None:
        """Create the demo staff, customers and bills (only in a database without bills)."""
        if seed_app(app):
            click.echo("seeded: 王会计 (财务), 李销售 (销售), 张三, 陈女士 and 3 bills")
        else:
            click.echo("nothing to do: the database already has bills (or is not migrated)")
