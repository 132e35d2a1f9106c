"""Money reports from the ledger: one function, :func:`summarize`, feeds the chat's 今日 / 本月 and the
monthly report (``flask --app app report``).

Definitions (all int fen):
- collected: the applied part of payments (``amount − excess``) received in the period, any method;
  an excess is never counted — it is refunded automatically;
- refunded: customer refunds that succeeded in the period (excess refunds give back money that was
  never collected, so they are not counted either);
- fees: WeChat's service fee (手续费) of the period's trade bills, as the daily reconciliation stored it
  line by line (refund lines return part of the fee, so they are negative);
- net: collected − refunded − fees.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db import CHINA_TZ
from payments.models import PAYABLE, Bill, Payment, Refund, RefundKind, RefundStatus
from payments.reconcile_models import Reconciliation

UNMATCHED = "（未匹配）"
NO_STAFF = "（ERP 或未指定）"


@dataclass
class Totals:
    collected_fen: int = 0
    payments: int = 0
    refunded_fen: int = 0
    refunds: int = 0
    fee_fen: int = 0

    @property
    def net_fen(self) -> int:
        return self.collected_fen - self.refunded_fen - self.fee_fen

    def add(self, other: Totals) -> None:
        self.collected_fen += other.collected_fen
        self.payments += other.payments
        self.refunded_fen += other.refunded_fen
        self.refunds += other.refunds
        self.fee_fen += other.fee_fen


@dataclass
class Summary:
    begin: dt.datetime
    end: dt.datetime
    groups: dict[str, Totals] = field(default_factory=dict)

    @property
    def total(self) -> Totals:
        total = Totals()
        for group in self.groups.values():
            total.add(group)
        return total


GroupKey = Callable[[Bill], str]


def by_stage(bill: Bill) -> str:
    return bill.stage


def by_staff(bill: Bill) -> str:
    return bill.issued_by.name if bill.issued_by is not None else NO_STAFF


def everything(bill: Bill) -> str:
    return "合计"


def day_bounds(first: dt.date, last: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[first 00:00, last+1 00:00) in China time."""
    begin = dt.datetime.combine(first, dt.time(), CHINA_TZ)
    return begin, dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), CHINA_TZ)


def month_bounds(month: dt.date) -> tuple[dt.datetime, dt.datetime]:
    first = month.replace(day=1)
    following = (first + dt.timedelta(days=32)).replace(day=1)
    return day_bounds(first, following - dt.timedelta(days=1))


def summarize(session: Session, begin: dt.datetime, end: dt.datetime, key: GroupKey = everything) -> Summary:
    """Collected, refunded and fees of [begin, end), grouped by ``key(bill)``."""
    summary = Summary(begin, end)

    def group(name: str) -> Totals:
        return summary.groups.setdefault(name, Totals())

    payments = session.execute(
        select(Payment).join(Bill).where(Payment.paid_at >= begin, Payment.paid_at < end).order_by(Payment.id)
    ).scalars()
    for payment in payments:
        applied = payment.amount_fen - payment.excess_fen
        if applied > 0:
            totals = group(key(payment.bill))
            totals.collected_fen += applied
            totals.payments += 1
    refunds = session.execute(
        select(Refund).where(
            Refund.kind == RefundKind.customer,
            Refund.status == RefundStatus.succeeded,
            Refund.finished_at >= begin,
            Refund.finished_at < end,
        )
    ).scalars()
    for refund in refunds:
        totals = group(key(refund.bill))
        totals.refunded_fen += refund.amount_fen
        totals.refunds += 1
    _add_fees(session, summary, key, group)
    return summary


def _add_fees(session: Session, summary: Summary, key: GroupKey, group: Callable[[str], Totals]) -> None:
    first = summary.begin.astimezone(CHINA_TZ).date()
    last = (summary.end.astimezone(CHINA_TZ) - dt.timedelta(microseconds=1)).date()
    runs = session.execute(
        select(Reconciliation.fees).where(Reconciliation.bill_date >= first, Reconciliation.bill_date <= last)
    ).scalars()
    for fees in runs:
        for book, model, column in (
            ("payments", Payment, Payment.transaction_id),
            ("refunds", Refund, Refund.out_refund_no),
        ):
            lines: dict[str, int] = (fees or {}).get(book) or {}
            if not lines:
                continue
            found = session.execute(
                select(column, Bill).join(Bill, model.bill_id == Bill.id).where(column.in_(lines))
            )
            bills = {str(ref): bill for ref, bill in found}
            for ref, fee in lines.items():
                bill = bills.get(ref)
                group(key(bill) if bill is not None else UNMATCHED).fee_fen += int(fee)


def outstanding(session: Session) -> tuple[int, int]:
    """(outstanding fen, number of payable bills) right now."""
    fen, count = session.execute(
        select(func.coalesce(func.sum(Bill.amount_fen - Bill.paid_fen), 0), func.count(Bill.id)).where(
            Bill.status.in_(PAYABLE)
        )
    ).one()
    return int(fen), int(count)

