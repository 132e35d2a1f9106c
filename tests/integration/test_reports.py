"""Reports equal the ledger: a property-based test over random payment and refund histories, and the
monthly report CLI in CSV and XLSX."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openpyxl import load_workbook

from db import CHINA_TZ, Database
from payments import services
from payments.models import STAGES, Bill, PaymentMethod, RefundStatus, StaffRole
from payments.reconcile_models import Reconciliation
from payments.reports import NO_STAFF, by_staff, by_stage, month_bounds, summarize
from tests.fixtures.database import truncate_all
from tests.fixtures.domain import Builder

MONTH = dt.date(2026, 11, 1)
START = dt.datetime(2026, 10, 20, tzinfo=CHINA_TZ)  # histories straddle the month on both sides
SPAN_HOURS = 24 * 55

bills = st.lists(
    st.tuples(st.sampled_from(STAGES), st.sampled_from([None, 0, 1]), st.integers(100, 5_000_000)),
    min_size=1,
    max_size=4,
)
events = st.lists(
    st.tuples(
        st.sampled_from(["wechat", "transfer", "refund_ok", "refund_closed"]),
        st.integers(0, 3),  # which bill
        st.floats(0.01, 1.0),  # share of what can be paid / refunded
        # when, in hours after START; the month's edges (Nov 1 and Dec 1, 00:00) drawn often
        st.one_of(st.integers(0, SPAN_HOURS), st.sampled_from([287, 288, 1007, 1008])),
    ),
    max_size=12,
)


def in_month(moment: dt.datetime) -> bool:
    begin, end = month_bounds(MONTH)
    return begin <= moment < end


class Ledger:
    """What the test itself did, kept apart from the code under test."""

    def __init__(self) -> None:
        self.collected: Counter[str] = Counter()
        self.refunded: Counter[str] = Counter()
        self.fees: Counter[str] = Counter()
        self.fee_lines: dict[dt.date, dict[str, int]] = {}


def play(
    db: Database, spec: list[tuple[str, int | None, int]], steps: list[tuple[str, int, float, int]]
) -> Ledger:
    build, ledger = Builder(db), Ledger()
    staff = [build.staff(StaffRole.sales, "李销售"), build.staff(StaffRole.finance, "王会计")]
    made = []
    for i, (stage, issuer, amount) in enumerate(spec):
        bill_id = build.bill(amount, stage=stage, phone=f"1380000{i:04d}", name=f"客户{i}")
        with db.transaction() as s:
            s.get_one(Bill, bill_id).issued_by_id = staff[issuer] if issuer is not None else None
        made.append(
            (bill_id, stage, "李销售王会计"[issuer * 3 : issuer * 3 + 3] if issuer is not None else NO_STAFF)
        )
    last_paid: dict[int, dt.datetime] = {}
    for step, (kind, which, share, hours) in enumerate(steps):
        bill_id, stage, who = made[which % len(made)]
        when = max(START + dt.timedelta(hours=hours), last_paid.get(bill_id, START))
        bill = build.get(bill_id)
        if kind in ("wechat", "transfer"):
            amount = max(1, int(bill.outstanding_fen * share))
            if bill.outstanding_fen == 0:
                continue
            if kind == "wechat":
                payment = build.pay(build.attempt(bill_id, amount), amount, when=when).payment
                assert payment is not None
                fee = (amount * 6 + 500) // 1000
                ledger.fee_lines.setdefault(when.date(), {})[str(payment.transaction_id)] = fee
                ledger.fees[stage + "|" + who] += (
                    fee if in_month(dt.datetime.combine(when.date(), dt.time(), CHINA_TZ)) else 0
                )
            else:
                with db.transaction() as s:
                    services.record_offline_payment(
                        s,
                        bill_id,
                        amount_fen=amount,
                        method=PaymentMethod.transfer,
                        staff_id=staff[1],
                        now=when,
                    )
            last_paid[bill_id] = when
            ledger.collected[stage + "|" + who] += amount if in_month(when) else 0
        else:
            refundable = bill.net_paid_fen
            if refundable == 0:
                continue
            amount = max(1, int(refundable * share))
            with db.transaction() as s:
                refunds = services.request_refund(
                    s,
                    bill_id=bill_id,
                    amount_fen=amount,
                    reason="测试",
                    request_no=f"P-{step}",
                    source="erp",
                    now=when,
                )
                for refund in refunds:
                    if refund.status is RefundStatus.pending:
                        status = RefundStatus.succeeded if kind == "refund_ok" else RefundStatus.closed
                        services.apply_refund_result(s, refund.out_refund_no, status=status, now=when)
                done = sum(r.amount_fen for r in refunds if r.status is RefundStatus.succeeded)
            ledger.refunded[stage + "|" + who] += done if in_month(when) else 0
    with db.transaction() as s:
        for day, lines in ledger.fee_lines.items():
            s.add(
                Reconciliation(
                    bill_date=day,
                    status="clean",
                    counts={},
                    totals={},
                    differences={},
                    fees={"payments": lines, "refunds": {}},
                )
            )
    return ledger


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=bills, steps=events)
def test_report_totals_equal_the_ledger_sums(
    db: Database, spec: list[tuple[str, int | None, int]], steps: list[tuple[str, int, float, int]]
) -> None:
    truncate_all(db)
    ledger = play(db, spec, steps)
    begin, end = month_bounds(MONTH)
    with db.transaction() as s:
        stages, staff = summarize(s, begin, end, by_stage), summarize(s, begin, end, by_staff)
        total = summarize(s, begin, end).total

    for view in (stages, staff):
        assert (view.total.collected_fen, view.total.refunded_fen, view.total.fee_fen) == (
            total.collected_fen,
            total.refunded_fen,
            total.fee_fen,
        )
    assert total.collected_fen == sum(ledger.collected.values())
    assert total.refunded_fen == sum(ledger.refunded.values())
    assert total.fee_fen == sum(ledger.fees.values())
    assert total.net_fen == total.collected_fen - total.refunded_fen - total.fee_fen
    for name, totals in stages.groups.items():
        assert totals.collected_fen == sum(v for k, v in ledger.collected.items() if k.split("|")[0] == name)
        assert totals.refunded_fen == sum(v for k, v in ledger.refunded.items() if k.split("|")[0] == name)
    for name, totals in staff.groups.items():
        assert totals.collected_fen == sum(v for k, v in ledger.collected.items() if k.split("|")[1] == name)
        assert totals.fee_fen == sum(v for k, v in ledger.fees.items() if k.split("|")[1] == name)


def test_the_monthly_report_cli_writes_csv_and_xlsx_with_the_same_totals(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    play(
        db,
        [("首期款", 0, 3_800_000), ("尾款", None, 1_000_000)],
        [
            ("wechat", 0, 0.5, 300),
            ("transfer", 1, 1.0, 320),
            ("refund_ok", 0, 0.1, 400),
            ("wechat", 0, 1.0, 50),
        ],
    )
    from app import create_app

    app = create_app(
        {
            "database_url": database_url,
            "instance_path": str(tmp_path),
            "sandbox": True,
            "wechat_app_id": "",
            "scheduler_enabled": False,
        }
    )
    runner = app.test_cli_runner()
    out_csv, out_xlsx = tmp_path / "m.csv", tmp_path / "m.xlsx"

    printed = runner.invoke(
        args=["report", "--month", "2026-11", "--format", "csv", "--output", str(out_csv)]
    )
    assert printed.exit_code == 0, printed.output
    assert (
        runner.invoke(
            args=["report", "--month", "2026-11", "--format", "xlsx", "--output", str(out_xlsx)]
        ).exit_code
        == 0
    )
    assert runner.invoke(args=["report", "--month", "2026-1x"]).exit_code == 2

    rows = list(csv.reader(io.StringIO(out_csv.read_text(encoding="utf-8-sig"))))
    sheet = load_workbook(out_xlsx).active
    assert sheet is not None
    cells = [[c.value for c in row] for row in sheet.iter_rows()]
    begin, end = month_bounds(MONTH)
    with db.transaction() as s:
        total = summarize(s, begin, end).total
    assert rows[0][:4] == ["分组", "名称", "收款笔数", "收款(元)"]
    assert {r[1] for r in rows if r[0] == "阶段"} == {"首期款", "尾款"}
    assert {r[1] for r in rows if r[0] == "员工"} == {"李销售", NO_STAFF}
    assert (
        rows[-1][0] == "合计"
        and rows[-1][3] == f"{total.collected_fen // 100}.{total.collected_fen % 100:02d}"
    )
    assert cells[-1][0] == "合计" and round(float(cells[-1][3]) * 100) == total.collected_fen
    assert round(float(cells[-1][7]) * 100) == total.net_fen
    assert "净额" in printed.output
    app.extensions["renopay.db"].dispose()
