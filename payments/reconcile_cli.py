"""``flask --app app reconcile --date YYYY-MM-DD`` and ``flask --app app report --month YYYY-MM --format
csv|xlsx``: finance's two commands. Money is formatted here (yuan with two decimals), nowhere else."""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path
from typing import Any

import click
from flask import Flask
from flask.cli import with_appcontext

from payments.money import fen_to_yuan_str
from payments.reports import Summary, Totals, by_staff, by_stage, month_bounds, summarize

STATUS_LABELS = {"clean": "一致", "differences": "有差异", "failed": "失败"}
DIFFERENCE_LABELS = {
    "missing_ours": "我方缺失（微信有）",
    "missing_wechat": "微信缺失（我方有）",
    "amount_differences": "金额不一致",
}
REPORT_HEADER = ("分组", "名称", "收款笔数", "收款(元)", "退款笔数", "退款(元)", "手续费(元)", "净额(元)")


def register(app: Flask) -> None:
    app.cli.add_command(reconcile_command)
    app.cli.add_command(report_command)


def _date(_: Any, __: Any, value: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if value else None
    except ValueError:
        raise click.BadParameter("use YYYY-MM-DD") from None


@click.command("reconcile")
@with_appcontext
@click.option("--date", "day", callback=_date, help="Bill date YYYY-MM-DD (default: yesterday, China time).")
def reconcile_command(day: dt.date | None) -> None:
    """Match WeChat Pay's trade bill of a date against the ledger, heal what is missing, record it."""
    from db import current_db
    from payments.reconcile import reconcile_day, yesterday_in_china
    from payments.runtime import gateway

    day = day or yesterday_in_china()
    report = reconcile_day(current_db(), gateway(), day, progress=lambda line: click.echo(f"… {line}"))
    click.echo(render_reconciliation(report.bill_date, report.status, report.counts, report.totals))
    for name, label in DIFFERENCE_LABELS.items():
        for item in report.differences.get(name) or []:
            click.echo(f"  {label}: {_describe(item)}")
    if report.status == "failed":
        click.echo(f"  错误: {report.differences.get('error')}", err=True)
        raise SystemExit(1)


def _describe(item: dict[str, Any]) -> str:
    ref = item.get("out_refund_no") or item.get("transaction_id")
    amounts = (
        f"微信 {fen_to_yuan_str(item['wechat_fen'])} / 我方 {fen_to_yuan_str(item['ours_fen'])}"
        if "wechat_fen" in item
        else fen_to_yuan_str(int(item.get("amount_fen", 0)))
    )
    healed = f" → {item['healed']}" if item.get("healed") else ""
    return f"{'退款' if item['type'] == 'refund' else '付款'} {ref} {amounts}{healed}"


def render_reconciliation(day: dt.date, status: str, counts: dict[str, int], totals: dict[str, int]) -> str:
    rows = [
        ("日期", day.isoformat()),
        ("结果", STATUS_LABELS.get(status, status)),
        ("微信账单行数", str(counts.get("wechat_rows", 0))),
        ("已匹配付款/退款", f"{counts.get('matched_payments', 0)} / {counts.get('matched_refunds', 0)}"),
        ("我方缺失", str(counts.get("missing_ours", 0))),
        ("微信缺失", str(counts.get("missing_wechat", 0))),
        ("金额不一致", str(counts.get("amount_differences", 0))),
        ("已自动补记", str(counts.get("healed", 0))),
        ("微信收款/退款(元)", _pair(totals, "wechat_paid_fen", "wechat_refunded_fen")),
        ("我方收款/退款(元)", _pair(totals, "ours_paid_fen", "ours_refunded_fen")),
        ("手续费(元)", fen_to_yuan_str(totals.get("fee_fen", 0))),
    ]
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label:<{width}}{value}" for label, value in rows)


def _pair(totals: dict[str, int], a: str, b: str) -> str:
    return f"{fen_to_yuan_str(totals.get(a, 0))} / {fen_to_yuan_str(totals.get(b, 0))}"


def _month(_: Any, __: Any, value: str) -> dt.date:
    try:
        return dt.datetime.strptime(value, "%Y-%m").date()
    except ValueError:
        raise click.BadParameter("use YYYY-MM") from None


@click.command("report")
@with_appcontext
@click.option("--month", required=True, callback=_month, help="YYYY-MM")
@click.option("--format", "fmt", type=click.Choice(["csv", "xlsx"]), default="csv", show_default=True)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File (default: report-YYYY-MM.<format>).",
)
def report_command(month: dt.date, fmt: str, output: Path | None) -> None:
    """Collected, refunded, fees and net of a month, by stage and by staff member."""
    from db import current_db

    begin, end = month_bounds(month)
    with current_db().transaction() as session:
        sections = [
            ("阶段", summarize(session, begin, end, by_stage)),
            ("员工", summarize(session, begin, end, by_staff)),
        ]
    rows = report_rows(sections)
    target = output or Path(f"report-{month:%Y-%m}.{fmt}")
    if fmt == "csv":
        target.write_text(to_csv(rows), encoding="utf-8-sig")  # with a BOM: Excel opens UTF-8 correctly
    else:
        target.write_bytes(to_xlsx(rows, f"{month:%Y-%m}"))
    total, yuan = sections[0][1].total, fen_to_yuan_str
    click.echo(f"{month:%Y-%m}: 收款 {yuan(total.collected_fen)}，退款 {yuan(total.refunded_fen)}，")
    click.echo(f"手续费 {yuan(total.fee_fen)}，净额 {yuan(total.net_fen)} → {target}")


def report_rows(sections: list[tuple[str, Summary]]) -> list[tuple[str, str, Totals]]:
    rows: list[tuple[str, str, Totals]] = []
    for label, summary in sections:
        rows += [(label, name, totals) for name, totals in sorted(summary.groups.items())]
    rows.append(("合计", "", sections[0][1].total))
    return rows


def _cells(totals: Totals) -> list[Any]:
    return [
        totals.payments,
        fen_to_yuan_str(totals.collected_fen),
        totals.refunds,
        fen_to_yuan_str(totals.refunded_fen),
        fen_to_yuan_str(totals.fee_fen),
        fen_to_yuan_str(totals.net_fen),
    ]


def to_csv(rows: list[tuple[str, str, Totals]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REPORT_HEADER)
    for section, name, totals in rows:
        writer.writerow([section, name, *_cells(totals)])
    return out.getvalue()


def to_xlsx(rows: list[tuple[str, str, Totals]], title: str) -> bytes:
    from decimal import Decimal

    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = title
    sheet.append(REPORT_HEADER)
    for section, name, totals in rows:
        cells = [c if isinstance(c, int) else Decimal(c) for c in _cells(totals)]
        sheet.append([section, name, *cells])
    for row in sheet.iter_rows(min_row=2):
        for cell in row[3:]:
            if cell.column in (4, 6, 7, 8):
                cell.number_format = "#,##0.00"
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
