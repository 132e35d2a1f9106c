"""Daily reconciliation: WeChat's trade bill of one date against our ledger.

Download the bill (the gateway checks its SHA1), parse it (payments/trade_bill.py), match it against
our payments (``transaction_id``) and refunds (``out_refund_no``), and classify: missing on our side,
missing on WeChat's side, amount differences, fees. Money WeChat has and we don't is healed through
the same idempotent paths as a notification (``services.apply_wechat_payment``, ``settle_refund``).
The result is one ``Reconciliation`` row per date — re-running replaces it — and a
``reconciliation.finished`` outbox event that carries the summary to finance in chat.

Known limit: a refund that succeeds within moments of midnight may be dated differently by WeChat and
by us; it then shows as "missing on WeChat's side" on our date and matches on WeChat's.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db import CHINA_TZ, Database, utcnow
from erp_sync.outbox import emit
from payments import services
from payments.models import Payment, PaymentMethod, Refund, RefundStatus
from payments.reconcile_models import ReconcileStatus, Reconciliation
from payments.refund_results import settle_refund
from payments.trade_bill import (
    BillRow,
    Matching,
    OurPayment,
    OurRefund,
    TradeBillFile,
    TradeBillFormatError,
    match,
    parse_trade_bill,
)
from payments.wechatpay import PermanentError, RetryableError, WeChatPayGateway

log = logging.getLogger("renopay.payments.reconcile")

SUMMARY_TOPIC = "reconciliation.finished"  # internal: feeds the finance chat summary, not the ERP
NO_STATEMENT = "NO_STATEMENT_EXIST"  # WeChat's answer for a date without any trade
MAX_ITEMS_IN_SUMMARY = 10
Progress = Callable[[str], None]


@dataclass
class ReconcileReport:
    bill_date: dt.date
    status: str
    counts: dict[str, int] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    differences: dict[str, Any] = field(default_factory=dict)


def china_day(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    begin = dt.datetime.combine(day, dt.time(), CHINA_TZ)
    return begin, begin + dt.timedelta(days=1)


def yesterday_in_china(now: dt.datetime | None = None) -> dt.date:
    return (now or utcnow()).astimezone(CHINA_TZ).date() - dt.timedelta(days=1)


def fetch_bill(gw: WeChatPayGateway, day: dt.date, progress: Progress) -> TradeBillFile:
    """The parsed bill; an empty one when WeChat has no statement for the date (no trade that day)."""
    progress(f"requesting the trade bill of {day.isoformat()}")
    try:
        ref = gw.trade_bill(day)
    except PermanentError as exc:
        if exc.code != NO_STATEMENT:
            raise
        progress("WeChat has no statement for that date (no trade)")
        return TradeBillFile((), {})
    progress("downloading and checking its SHA1")
    text = gw.download_bill(ref)
    bill = parse_trade_bill(text)
    progress(f"parsed {len(bill.rows)} lines")
    return bill


def _ours(
    session: Session, bill: TradeBillFile, day: dt.date
) -> tuple[dict[str, OurPayment], dict[str, OurRefund]]:
    begin, end = china_day(day)
    txids = {r.transaction_id for r in bill.rows if not r.is_refund}
    refund_nos = {r.out_refund_no for r in bill.rows if r.out_refund_no}
    payments = session.execute(
        select(Payment).where(
            Payment.method == PaymentMethod.wechat,
            or_(Payment.transaction_id.in_(txids), (Payment.paid_at >= begin) & (Payment.paid_at < end)),
        )
    ).scalars()
    ours_p = {
        str(p.transaction_id): OurPayment(
            str(p.transaction_id), p.amount_fen, p.receipt_no, begin <= p.paid_at < end
        )
        for p in payments
    }
    refunds = session.execute(
        select(Refund)
        .join(Payment, Refund.payment_id == Payment.id)
        .where(
            Payment.method == PaymentMethod.wechat,
            or_(
                Refund.out_refund_no.in_(refund_nos),
                (Refund.status == RefundStatus.succeeded)
                & (Refund.finished_at >= begin)
                & (Refund.finished_at < end),
            ),
        )
    ).scalars()
    ours_r = {
        r.out_refund_no: OurRefund(
            r.out_refund_no,
            r.amount_fen,
            str(r.status),
            r.finished_at is not None and begin <= r.finished_at < end,
        )
        for r in refunds
    }
    return ours_p, ours_r


def _heal_payment(db: Database, gw: WeChatPayGateway, row: BillRow) -> str:
    facts = services.WeChatPaymentFacts(
        out_trade_no=row.out_trade_no,
        transaction_id=row.transaction_id,
        amount_fen=row.total_fen,
        appid=row.appid,
        mchid=row.mchid,
        success_time=row.time,
        payer_openid=row.openid or None,
        trade_type=row.trade_type or None,
    )
    with db.transaction() as session:
        return str(services.apply_wechat_payment(session, facts, appid=gw.appid, mchid=gw.mchid).outcome)


def _heal_refund(db: Database, item: dict[str, Any]) -> str:
    """A refund WeChat paid that we still think is open: its notification was lost. Unknown ones stay
    a difference for finance (we never invent a refund)."""
    if item.get("ours_status") not in ("pending", "processing", "abnormal"):
        return "not ours" if item.get("ours_status") is None else "left for finance"
    with db.transaction() as session:
        settle_refund(session, str(item["out_refund_no"]), status=RefundStatus.succeeded)
    return "applied"


def heal(
    db: Database, gw: WeChatPayGateway, bill: TradeBillFile, matching: Matching, progress: Progress
) -> int:
    rows = {(r.transaction_id, r.out_refund_no): r for r in bill.rows}
    healed = 0
    for item in matching.missing_ours:
        if item["type"] == "payment":
            outcome = _heal_payment(db, gw, rows[(item["transaction_id"], None)])
        else:
            outcome = _heal_refund(db, item)
        item["healed"] = outcome
        healed += outcome == "applied"
        progress(f"healed {item['type']} {item.get('out_refund_no') or item['transaction_id']}: {outcome}")
    return healed


def _summarise(
    day: dt.date,
    bill: TradeBillFile,
    matching: Matching,
    ours: tuple[dict[str, OurPayment], dict[str, OurRefund]],
    healed: int,
) -> ReconcileReport:
    payments, refunds = ours
    paid_rows = [r for r in bill.rows if not r.is_refund]
    counts = {
        "wechat_rows": len(bill.rows),
        "wechat_payments": len(paid_rows),
        "wechat_refunds": len(bill.rows) - len(paid_rows),
        "matched_payments": matching.matched_payments,
        "matched_refunds": matching.matched_refunds,
        "missing_ours": len(matching.missing_ours),
        "missing_wechat": len(matching.missing_wechat),
        "amount_differences": len(matching.amount_differences),
        "healed": healed,
    }
    totals = {
        "wechat_paid_fen": sum(r.total_fen for r in paid_rows),
        "wechat_refunded_fen": sum(r.refund_fen for r in bill.rows if r.is_refund),
        "fee_fen": bill.fee_fen,
        "ours_paid_fen": sum(p.amount_fen for p in payments.values() if p.on_bill_date),
        "ours_refunded_fen": sum(
            r.amount_fen for r in refunds.values() if r.on_bill_date and r.status == "succeeded"
        ),
    }
    differences = {
        "missing_ours": matching.missing_ours,
        "missing_wechat": matching.missing_wechat,
        "amount_differences": matching.amount_differences,
    }
    status = ReconcileStatus.clean if matching.clean else ReconcileStatus.differences
    return ReconcileReport(day, str(status), counts, totals, differences)


def _fee_map(bill: TradeBillFile) -> dict[str, dict[str, int]]:
    fees: dict[str, dict[str, int]] = {"payments": {}, "refunds": {}}
    for row in bill.rows:
        key, book = (row.out_refund_no, "refunds") if row.out_refund_no else (row.transaction_id, "payments")
        fees[book][key] = fees[book].get(key, 0) + row.fee_fen
    return fees


def record(
    session: Session, report: ReconcileReport, fees: dict[str, Any], now: dt.datetime
) -> Reconciliation:
    """Upsert the day's record (the caller's transaction) and emit the finance summary."""
    row = session.execute(
        select(Reconciliation).where(Reconciliation.bill_date == report.bill_date).with_for_update()
    ).scalar_one_or_none()
    if row is None:
        row = Reconciliation(bill_date=report.bill_date, runs=0, created_at=now)
        session.add(row)
    row.status, row.counts, row.totals = report.status, report.counts, report.totals
    row.differences, row.fees = report.differences, fees
    row.runs += 1
    row.updated_at = now
    emit(session, SUMMARY_TOPIC, bill=None, data=summary_data(report), now=now)
    return row


def store(db: Database, report: ReconcileReport, fees: dict[str, Any], now: dt.datetime) -> None:
    for _ in range(2):  # two runs of one date at once: the loser of the insert race updates instead
        try:
            with db.transaction() as session:
                record(session, report, fees, now)
            return
        except IntegrityError:
            continue
    raise RuntimeError(f"could not store the reconciliation of {report.bill_date}")


def summary_data(report: ReconcileReport) -> dict[str, Any]:
    """The finance summary (bot/notice_content.py plans it for every finance member)."""
    listed = {
        name: items[:MAX_ITEMS_IN_SUMMARY] if isinstance(items, list) else items
        for name, items in report.differences.items()
    }
    return {
        "bill_date": report.bill_date.isoformat(),
        "status": report.status,
        "amount_fen": report.totals.get("wechat_paid_fen", 0),
        "counts": report.counts,
        "totals": report.totals,
        "differences": listed,
    }


def reconcile_day(
    db: Database,
    gw: WeChatPayGateway,
    day: dt.date,
    *,
    progress: Progress | None = None,
    now: dt.datetime | None = None,
) -> ReconcileReport:
    """Reconcile one date; safe to run again (the record is replaced, healing is idempotent)."""
    say = progress or (lambda _: None)
    now = now or utcnow()
    try:
        bill = fetch_bill(gw, day, say)
    except (RetryableError, PermanentError, TradeBillFormatError) as exc:
        error = f"{getattr(exc, 'code', '') or type(exc).__name__}: {exc}"[:300]
        say(f"failed: {error}")
        report = ReconcileReport(day, str(ReconcileStatus.failed), differences={"error": error})
        store(db, report, {}, now)
        return report
    with db.transaction() as session:
        ours = _ours(session, bill, day)
    say(f"matching against {len(ours[0])} payments and {len(ours[1])} refunds of ours")
    matching = match(bill.rows, *ours)
    healed = heal(db, gw, bill, matching, say)
    report = _summarise(day, bill, matching, ours, healed)
    store(db, report, _fee_map(bill), now)
    say(f"done: {report.status}")
    return report


def run_daily(db: Database, gw: WeChatPayGateway) -> ReconcileReport:
    """The 10:30 job: yesterday's bill (WeChat has it ready from about 09:00)."""
    report = reconcile_day(db, gw, yesterday_in_china())
    log.info("reconciliation of %s: %s %s", report.bill_date, report.status, report.counts)
    return report
