"""Human-readable, unique numbers (bill B2611-0042, receipt R2611-00042) and WeChat order numbers.

Counters live in one table and are bumped with ``UPDATE … RETURNING`` inside the caller's
transaction, so two concurrent bills never get the same number on either database.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any, cast

from sqlalchemy import ColumnElement, Integer, String, Table, bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.sql.visitors import InternalTraversal

from db import CHINA_TZ, Base, Pending, Prepared, session_connection


class Counter(Base):
    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


def bump_statement(dialect: str) -> Any:
    """The counter upsert, built once per dialect against the table (a Core statement with a bound
    name: SQLAlchemy caches its compiled form, and no ORM bookkeeping runs on the hot path)."""
    table = cast(Table, Counter.__table__)
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    upsert = insert(table).values(name=bindparam("counter_name"), value=1)
    bump = upsert.on_conflict_do_update(index_elements=["name"], set_={"value": table.c.value + 1})
    return bump.returning(table.c.value)


_BUMP = {dialect: Prepared(bump_statement(dialect)) for dialect in ("postgresql", "sqlite")}


def next_value(session: Session, name: str) -> int:
    """Bump and return a named counter in one statement (an upsert that locks the counter row
    until the caller's transaction ends, so numbers are unique and gapless per commit order)."""
    return int(bump(session, name).scalar())


def _month(now: dt.datetime) -> str:
    return now.astimezone(CHINA_TZ).strftime("%y%m")


RECEIPT_DIGITS = 5


class _ZeroPadded(ColumnElement[str]):
    """``value`` as text, zero-padded to at least ``width`` digits — ``f"{value:0{width}d}"`` in SQL
    (never truncated: 123456 stays 123456)."""

    type = String()
    inherit_cache = True
    _traverse_internals = [
        ("value", InternalTraversal.dp_clauseelement),
        ("width", InternalTraversal.dp_plain_obj),
    ]

    def __init__(self, value: Any, width: int) -> None:
        self.value, self.width = value, width


@compiles(_ZeroPadded)  # PostgreSQL's form, also for printing a statement without a dialect
@compiles(_ZeroPadded, "postgresql")
def _zero_padded_pg(element: _ZeroPadded, compiler: Any, **kw: Any) -> str:
    text = f"CAST({compiler.process(element.value, **kw)} AS TEXT)"
    return f"lpad({text}, greatest({element.width}, length({text})), '0')"


@compiles(_ZeroPadded, "sqlite")
def _zero_padded_sqlite(element: _ZeroPadded, compiler: Any, **kw: Any) -> str:
    return f"printf('%0{element.width}d', {compiler.process(element.value, **kw)})"


def receipt_counter(now: dt.datetime) -> tuple[str, str]:
    """(counter name, receipt number prefix) of the month ``now`` falls in (China time)."""
    month = _month(now)
    return "receipt-" + month, f"R{month}-"


def receipt_number(value: Any) -> Any:
    """The receipt number of a counter ``value`` (a column) with the prefix ``:receipt_prefix``, in
    SQL: what ``next_receipt_number`` formats."""
    return bindparam("receipt_prefix", type_=String) + _ZeroPadded(value, RECEIPT_DIGITS)


def counted_receipt_number() -> Any:
    """The receipt number of the value the counter ``:counter_name`` holds now, as a scalar
    subquery — for a statement sent right after the counter's bump in the same transaction (which
    holds the counter row until it ends), without waiting for the bump's result."""
    table = cast(Table, Counter.__table__)
    number = select(receipt_number(table.c.value)).where(table.c.name == bindparam("counter_name"))
    return number.scalar_subquery()


def bump(session: Session, name: str) -> Pending:
    """Bump a counter; its new value is read from the result when needed (inside a ``db.pipeline``
    the bump is queued with the statements that use it, see ``counted_receipt_number``)."""
    connection = session_connection(session)
    return _BUMP[connection.dialect.name].send(connection, {"counter_name": name})


def next_bill_number(session: Session, now: dt.datetime) -> str:
    month = _month(now)
    return f"B{month}-{next_value(session, 'bill-' + month):04d}"


def next_receipt_number(session: Session, now: dt.datetime) -> str:
    name, prefix = receipt_counter(now)
    return f"{prefix}{next_value(session, name):0{RECEIPT_DIGITS}d}"


def new_out_trade_no(bill_number: str) -> str:
    """``B2611-0042-9f3a1c7e``: 6–32 of [0-9A-Za-z_-], never ``|``; unique across retries."""
    return f"{bill_number}-{secrets.token_hex(4)}"


def normalise_bill_number(text: str) -> str:
    """Accept what people type: ``b2611-42``, ``B2611 0042``, ``B26110042``."""
    raw = "".join(ch for ch in text.upper() if ch.isalnum())
    if len(raw) >= 6 and raw[0] == "B" and raw[1:5].isdigit() and raw[5:].isdigit():
        return f"B{raw[1:5]}-{int(raw[5:]):04d}"
    return text.strip().upper()
