"""Human-readable, unique numbers (bill B2611-0042, receipt R2611-00042) and WeChat order numbers.

Counters live in one table and are bumped with ``UPDATE … RETURNING`` inside the caller's
transaction, so two concurrent bills never get the same number on either database.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any, cast

from sqlalchemy import Integer, String, Table, bindparam
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from db import CHINA_TZ, Base, Prepared, session_connection


class Counter(Base):
    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


def _bump_statement(dialect: str) -> Any:
    """The counter upsert, built once per dialect against the table (a Core statement with a bound
    name: SQLAlchemy caches its compiled form, and no ORM bookkeeping runs on the hot path)."""
    table = cast(Table, Counter.__table__)
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    upsert = insert(table).values(name=bindparam("counter_name"), value=1)
    bump = upsert.on_conflict_do_update(index_elements=["name"], set_={"value": table.c.value + 1})
    return bump.returning(table.c.value)


_BUMP = {dialect: Prepared(_bump_statement(dialect)) for dialect in ("postgresql", "sqlite")}


def next_value(session: Session, name: str) -> int:
    """Bump and return a named counter in one statement (an upsert that locks the counter row
    until the caller's transaction ends, so numbers are unique and gapless per commit order)."""
    connection = session_connection(session)
    return int(_BUMP[connection.dialect.name].scalar(connection, {"counter_name": name}))


def _month(now: dt.datetime) -> str:
    return now.astimezone(CHINA_TZ).strftime("%y%m")


def next_bill_number(session: Session, now: dt.datetime) -> str:
    month = _month(now)
    return f"B{month}-{next_value(session, 'bill-' + month):04d}"


def next_receipt_number(session: Session, now: dt.datetime) -> str:
    month = _month(now)
    return f"R{month}-{next_value(session, 'receipt-' + month):05d}"


def new_out_trade_no(bill_number: str) -> str:
    """``B2611-0042-9f3a1c7e``: 6–32 of [0-9A-Za-z_-], never ``|``; unique across retries."""
    return f"{bill_number}-{secrets.token_hex(4)}"


def normalise_bill_number(text: str) -> str:
    """Accept what people type: ``b2611-42``, ``B2611 0042``, ``B26110042``."""
    raw = "".join(ch for ch in text.upper() if ch.isalnum())
    if len(raw) >= 6 and raw[0] == "B" and raw[1:5].isdigit() and raw[5:].isdigit():
        return f"B{raw[1:5]}-{int(raw[5:]):04d}"
    return text.strip().upper()
