"""PostgreSQL's one-call payment (migration 0009, payments/stored_apply.py) against the Python path.

The same notifications, on the same rows, with the clock, event ids and order numbers fixed, applied
once by the database function and once by the Python path (``apply_transaction_generally``, which
SQLite always takes): every row of every table the payment touches must come out identical — the
bill, its attempts, the payment and its receipt number, the event's payload, the deliveries, the
counters and the raw notification. Notifications the function does not take must leave the database
exactly as it was; concurrent ones must never overpay a bill."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import text, update

import db as db_module
import erp_sync.outbox
import payments.numbers
from db import Database
from payments import services
from payments.models import AttemptStatus, BillSource, Channel, Customer, PaymentAttempt, Staff, StaffRole
from payments.notifications import RawNotification
from payments.notify import apply_transaction, apply_transaction_generally, facts_from
from payments.stored_apply import apply_in_one_call
from payments.wechatpay import Callback
from tests.fixtures.database import truncate_all
from tests.fixtures.domain import APPID, MAX_FEN, MCHID, Builder

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 11, 26, 2, 30, 15, 123456, tzinfo=dt.UTC)
PAID_AT = "2026-11-26T10:00:00+08:00"
TABLES = {"customers": "id", "staff": "id", "bills": "id", "payment_attempts": "id", "payments": "id",
          "outbox_events": "id", "outbox_deliveries": "id", "counters": "name",
          "payment_notifications": "id", "payment_anomalies": "id"}
GATEWAY = SimpleNamespace(appid=APPID, mchid=MCHID)


class Fixed:
    """The clock, event ids and order numbers, the same in every run (reset before each)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._ids = itertools.count(1)

    def utcnow(self) -> dt.datetime:
        return NOW

    def new_event_id(self) -> str:
        return f"evt_{next(self._ids):024d}"

    def new_out_trade_no(self, bill_number: str) -> str:
        return f"{bill_number}-{next(self._ids):08x}"


@pytest.fixture
def fixed(monkeypatch: pytest.MonkeyPatch) -> Fixed:
    """Replace, in every module of ours that imported them, the three sources of variation."""
    fixed = Fixed()
    originals = {"utcnow": db_module.utcnow, "new_event_id": erp_sync.outbox.new_event_id,
                 "new_out_trade_no": payments.numbers.new_out_trade_no}
    for module in list(sys.modules.values()):
        path = str(getattr(module, "__file__", "") or "")
        if not path.startswith(str(ROOT)) or ".venv" in path:
            continue
        for name, original in originals.items():
            if getattr(module, name, None) is original:
                monkeypatch.setattr(module, name, getattr(fixed, name))
    return fixed


# Written when the scenario sets its rows up, by column defaults (which call the real clock): no
# payment writes these. Everything else, the payment's own times included, is compared as it is.
SET_UP_AT = {"customers": {"created_at"}, "staff": {"created_at"}, "bills": {"created_at", "opened_at"},
             "payment_attempts": {"created_at", "expires_at", "next_check_at"}}


def dump(db: Database) -> dict[str, list[dict[str, Any]]]:
    def row_of(table: str, row: Any) -> dict[str, Any]:
        values = dict(row._mapping)
        for column in SET_UP_AT.get(table, ()):
            if values[column] is not None:
                values[column] = "(set up)"
        return values

    with db.engine.connect() as c:
        return {table: [row_of(table, row) for row in c.execute(text(f"SELECT * FROM {table} ORDER BY {k}"))]
                for table, k in TABLES.items()}


def notification(out_trade_no: str, total: int, transaction_id: str, event_id: str) -> Callback:
    resource = {
        "appid": APPID, "mchid": MCHID, "out_trade_no": out_trade_no, "transaction_id": transaction_id,
        "trade_type": "NATIVE", "trade_state": "SUCCESS", "trade_state_desc": "支付成功",
        "success_time": PAID_AT, "payer": {"openid": "o_payer_1"},
        "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"},
    }
    return Callback(event_id=event_id, event_type="TRANSACTION.SUCCESS", resource=resource)


def body_of(callback: Callback) -> str:
    return json.dumps({"id": callback.event_id, "event_type": callback.event_type, "resource": "…"})


def one_call(db: Database, callback: Callback) -> str | None:
    resource = dict(callback.resource)
    raw = RawNotification(callback.event_id, callback.event_type, "payment", resource["out_trade_no"],
                          body_of(callback), resource)
    return apply_in_one_call(db, facts_from(resource), raw)


def python_path(db: Database, callback: Callback) -> str:
    return apply_transaction_generally(db, GATEWAY, callback, body_of(callback))  # type: ignore[arg-type]


# A scenario builds its bills (through the Python services) and returns the notifications to apply.
Scenario = Callable[[Builder], list[Callback]]


def _staff(session: Any) -> int:
    staff = Staff(name="王工", role=StaffRole.sales, openid="o_staff_7")
    session.add(staff)
    session.flush()
    return staff.id


def _customer_bill(build: Builder, amount: int, *, rich: bool = False) -> int:
    with build.db.transaction() as s:
        customer = services.find_or_create_customer(s, name="李四" if rich else "张三", phone="13900139000",
                                                    erp_ref="CUST-7" if rich else None)
        if rich:
            s.execute(update(Customer).where(Customer.id == customer.id).values(openid="o_customer_7"))
        bill = services.issue_bill(
            s, customer=customer, amount_fen=amount, stage="中期款", source=BillSource.erp, max_fen=MAX_FEN,
            title='客厅"水电"\\改造 </script> 🏠' if rich else "水电改造", open_now=True,
            contract_no="HT-2026-001" if rich else None, due_date=dt.date(2026, 12, 1) if rich else None,
            erp_ref="ERP-B-7" if rich else None, issued_by_id=_staff(s) if rich else None,
        )
        return bill.id


def partial_then_the_rest(build: Builder) -> list[Callback]:
    bill_id = _customer_bill(build, 3_800_000)
    first, rest = build.attempt(bill_id, 1_000_000), build.attempt(bill_id, 2_800_000)
    return [notification(first, 1_000_000, "4200000001", "e1"),
            notification(rest, 2_800_000, "4200000002", "e2")]


def paid_in_full_with_every_field_and_another_order_pending(build: Builder) -> list[Callback]:
    bill_id = _customer_bill(build, 3_800_000, rich=True)
    with build.db.transaction() as s:
        services.start_attempt(s, bill_id, channel=Channel.jsapi, payer_openid="o_payer_1")
    native = build.attempt(bill_id)
    return [notification(native, 3_800_000, "4200000003", "e3")]


def late_payment_on_a_closed_order(build: Builder) -> list[Callback]:
    bill_id = _customer_bill(build, 50_000)
    order = build.attempt(bill_id)
    with build.db.transaction() as s:
        s.execute(update(PaymentAttempt).where(PaymentAttempt.out_trade_no == order)
                  .values(status=AttemptStatus.closed, closed_at=NOW, close_reason="expired"))
    return [notification(order, 50_000, "4200000004", "e4")]


def redelivered(build: Builder) -> list[Callback]:
    """The same event again, then the same transaction in a new event: both 'duplicate'."""
    order = build.attempt(_customer_bill(build, 1))
    return [notification(order, 1, "4200000005", "e5"), notification(order, 1, "4200000005", "e5"),
            notification(order, 1, "4200000005", "e6")]


SCENARIOS: list[Scenario] = [partial_then_the_rest, paid_in_full_with_every_field_and_another_order_pending,
                             late_payment_on_a_closed_order, redelivered]


def _run(db: Database, fixed: Fixed, scenario: Scenario, apply: Callable[[Database, Callback], Any]) -> Any:
    truncate_all(db)  # and identities restart: the same ids in every run
    fixed.reset()
    callbacks = scenario(Builder(db))
    outcomes = [apply(db, callback) for callback in callbacks]
    return outcomes, dump(db)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_the_one_call_writes_exactly_what_the_python_path_writes(
    pg_db: Database, fixed: Fixed, scenario: Scenario
) -> None:
    by_function, rows = _run(pg_db, fixed, scenario, one_call)
    by_python, expected = _run(pg_db, fixed, scenario, python_path)
    assert by_function == by_python
    assert "applied" in by_function and set(by_function) <= {"applied", "duplicate"}
    for table in TABLES:
        assert rows[table] == expected[table], table
    assert rows["payments"] and rows["outbox_events"] and rows["payment_notifications"]


def test_what_it_wrote_is_what_the_scenarios_meant(pg_db: Database, fixed: Fixed) -> None:
    """Beyond equality with the Python path: a few facts checked outright."""
    outcomes, rows = _run(pg_db, fixed, paid_in_full_with_every_field_and_another_order_pending, one_call)
    assert outcomes == ["applied"]
    (bill,) = rows["bills"]
    assert (bill["status"], bill["paid_fen"], bill["seq"]) == ("paid", 3_800_000, 2)
    assert sorted((a["status"], a["close_reason"]) for a in rows["payment_attempts"]) == [
        ("closed", "bill_paid"), ("succeeded", None)]
    (payment,) = rows["payments"]
    assert payment["receipt_no"] == "R2611-00001"
    (paid_order,) = (a["out_trade_no"] for a in rows["payment_attempts"] if a["id"] == payment["attempt_id"])
    payload = next(e["payload"] for e in rows["outbox_events"] if e["topic"] == "payment.succeeded")
    assert payload["bill"]["seq"] == 2 and payload["data"]["title"] == '客厅"水电"\\改造 </script> 🏠'
    assert payload["data"]["payment"] == {
        "receipt_no": "R2611-00001", "method": "wechat", "amount_fen": 3_800_000, "applied_fen": 3_800_000,
        "transaction_id": "4200000003", "out_trade_no": paid_order, "paid_at": PAID_AT, "note": None}
    assert payload["data"]["customer"] == {"name": "李四", "erp_ref": "CUST-7", "openid": "o_customer_7"}
    assert (payload["data"]["due_date"], payload["data"]["late"]) == ("2026-12-01", False)
    _, redelivery = _run(pg_db, fixed, redelivered, one_call)
    assert [(n["event_id"], n["outcome"], n["deliveries"]) for n in redelivery["payment_notifications"]] == [
        ("e5", "applied", 2), ("e6", "duplicate", 1)]


def _declined(build: Builder) -> Iterator[tuple[str, Callback]]:
    bill_id = _customer_bill(build, 1_500_000)
    order = build.attempt(bill_id, 1_000_000)
    yield "unknown order", notification("B2611-9999-00000000", 1_000_000, "4200000010", "d1")
    yield "amount other than the order's", notification(order, 999_999, "4200000011", "d2")
    paid_part = build.attempt(bill_id, 800_000)
    assert build.pay(paid_part, 800_000).outcome is services.Outcome.applied
    yield "more than the bill still owes", notification(order, 1_000_000, "4200000012", "d3")
    other = _customer_bill(build, 70_000)
    voided = build.attempt(other)
    with build.db.transaction() as s:
        s.execute(text("UPDATE bills SET status = 'void' WHERE id = :id"), {"id": other})
    yield "a void bill", notification(voided, 70_000, "4200000013", "d4")
    failed = build.attempt(_customer_bill(build, 60_000))
    with build.db.transaction() as s:
        s.execute(update(PaymentAttempt).where(PaymentAttempt.out_trade_no == failed)
                  .values(status=AttemptStatus.failed))
    yield "a failed order", notification(failed, 60_000, "4200000014", "d5")


def test_what_the_function_does_not_take_it_leaves_untouched(pg_db: Database, fixed: Fixed) -> None:
    truncate_all(pg_db)
    seen = []
    for case, callback in _declined(Builder(pg_db)):
        before = dump(pg_db)
        assert one_call(pg_db, callback) is None, case
        assert dump(pg_db) == before, case
        seen.append(case)
    assert len(seen) == 5


SIGNATURE = ("renopay_apply_fitting_payment(text, text, bigint, text, timestamp, text, timestamp, text, text,"
             " text, text, text[], text, text, text, json)")


def test_a_failing_one_call_goes_the_general_way(
    pg_db: Database, fixed: Fixed, caplog: pytest.LogCaptureFixture
) -> None:
    """The function gone (a database not migrated): the call fails, writing nothing, and the
    notification is applied the general way; the log names the database's error, not the parameters."""
    truncate_all(pg_db)
    build = Builder(pg_db)
    order = build.attempt(_customer_bill(build, 20_000))
    callback = notification(order, 20_000, "4200000020", "f1")
    with pg_db.engine.begin() as c:
        c.execute(text(f"ALTER FUNCTION {SIGNATURE} RENAME TO renopay_moved_away"))
    try:
        assert apply_transaction(pg_db, GATEWAY, callback, body_of(callback)) == "applied"  # type: ignore[arg-type]
    finally:
        with pg_db.engine.begin() as c:
            moved = SIGNATURE.replace("renopay_apply_fitting_payment", "renopay_moved_away")
            c.execute(text(f"ALTER FUNCTION {moved} RENAME TO renopay_apply_fitting_payment"))
    rows = dump(pg_db)
    assert [(n["event_id"], n["outcome"]) for n in rows["payment_notifications"]] == [("f1", "applied")]
    assert [p["transaction_id"] for p in rows["payments"]] == ["4200000020"]
    (warning,) = [r.getMessage() for r in caplog.records if "one-call apply" in r.getMessage()]
    assert "does not exist" in warning and "4200000020" not in warning


def test_twenty_concurrent_payments_of_one_bill_never_overpay_it(pg_db: Database) -> None:
    """Each call waits for the bill's lock and then reads what the calls before it committed. Twenty
    orders of ¥1,000.00–¥1,000.19 (each new one supersedes the last: late payments still fit) on a
    ¥10,000 bill: any nine fit and no ten do, so nine are applied, in one unbroken run of seqs and
    receipt numbers, and eleven are left to the general path (which records their excess)."""
    truncate_all(pg_db)
    build = Builder(pg_db)
    bill_id = _customer_bill(build, 1_000_000)
    amounts = [100_000 + i for i in range(20)]
    orders = [build.attempt(bill_id, amount) for amount in amounts]
    assert len(set(orders)) == 20
    callbacks = [notification(order, amount, f"42000001{i:02d}", f"c{i}")
                 for i, (order, amount) in enumerate(zip(orders, amounts, strict=True))]
    barrier = threading.Barrier(len(callbacks))

    def call(callback: Callback) -> str | None:
        barrier.wait()
        return one_call(pg_db, callback)

    with ThreadPoolExecutor(len(callbacks)) as pool:
        outcomes = list(pool.map(call, callbacks))
    assert Counter(outcomes) == {"applied": 9, None: 11}
    applied = {o for o, outcome in zip(orders, outcomes, strict=True) if outcome == "applied"}
    rows = dump(pg_db)
    (bill,) = rows["bills"]
    paid = sum(a["amount_fen"] for a in rows["payment_attempts"] if a["out_trade_no"] in applied)
    assert (bill["status"], bill["paid_fen"], bill["seq"]) == ("partially_paid", paid, 10)
    assert sorted(p["amount_fen"] for p in rows["payments"]) == sorted(
        a["amount_fen"] for a in rows["payment_attempts"] if a["out_trade_no"] in applied)
    assert sorted(e["seq"] for e in rows["outbox_events"] if e["topic"] == "payment.succeeded") == \
        list(range(2, 11))
    assert sorted(p["receipt_no"] for p in rows["payments"]) == [f"R2611-{n:05d}" for n in range(1, 10)]
    assert {a["status"] for a in rows["payment_attempts"] if a["out_trade_no"] in applied} == {"succeeded"}
    assert len(rows["payment_notifications"]) == 9  # those left over are recorded by the general path
