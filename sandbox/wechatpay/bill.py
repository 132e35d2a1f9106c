"""Trade bills (交易账单) in WeChat's CSV format, built from the stand-in's ledger plus injections.

Format: UTF-8, ``\\r\\n`` line ends; a detail header line, one line per order paid / refund succeeded
that day (Asia/Shanghai), every field prefixed with a backtick and amounts in yuan; then a summary
header line and one summary line (also backtick-prefixed). The same 27 detail columns are used for
bill_type ALL, SUCCESS and REFUND (the latter two only filter rows).
"""

from __future__ import annotations

import datetime as dt
import random
import string
import threading
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from .errors import CST
from .models import Order, Refund, new_openid, new_transaction_id
from .state import Store

DETAIL_HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,"
    "货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,"
    "商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
)
SUMMARY_HEADER = (
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
)
INJECTION_KINDS = ("extra_paid", "amount_changed", "refund_removed", "refund_added")
FEE_RATE = Decimal("0.006")
BILL_TYPES = ("ALL", "SUCCESS", "REFUND")


def yuan(fen: int) -> str:
    return str((Decimal(fen) / 100).quantize(Decimal("0.01")))


def fee(fen: int) -> int:
    return int((Decimal(fen) * FEE_RATE).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@dataclass
class Row:
    time: dt.datetime
    appid: str
    mchid: str
    transaction_id: str
    out_trade_no: str
    openid: str
    trade_type: str
    bank_type: str
    description: str
    attach: str
    total: int = 0  # paid rows: 应结订单金额 / 订单金额
    refund: int = 0  # refund rows: 退款金额 / 申请退款金额
    refund_id: str = "0"
    out_refund_no: str = "0"

    @property
    def is_refund(self) -> bool:
        return self.refund_id != "0"

    def fields(self) -> list[str]:
        refund = self.is_refund
        return [
            self.time.strftime("%Y-%m-%d %H:%M:%S"),
            self.appid,
            self.mchid,
            "0",
            "",
            self.transaction_id,
            self.out_trade_no,
            self.openid,
            self.trade_type,
            "REFUND" if refund else "SUCCESS",
            self.bank_type,
            "CNY",
            yuan(self.total),
            "0.00",
            self.refund_id,
            self.out_refund_no,
            yuan(self.refund),
            "0.00",
            "ORIGINAL" if refund else "",
            "SUCCESS" if refund else "",
            self.description,
            self.attach,
            yuan(-fee(self.refund) if refund else fee(self.total)),
            "0.60%",
            yuan(self.total),
            yuan(self.refund),
            "",
        ]


def _paid_row(order: Order) -> Row:
    assert order.success_time and order.transaction_id
    return Row(
        order.success_time,
        order.appid,
        order.mchid,
        order.transaction_id,
        order.out_trade_no,
        order.payer_openid or "",
        order.trade_type,
        order.bank_type or "OTHERS",
        order.description,
        order.attach or "",
        total=order.paid_total or order.total,
    )


def _refund_row(refund: Refund) -> Row:
    assert refund.success_time
    row = _paid_row(refund.order)
    row.time, row.total, row.refund = refund.success_time, 0, refund.refund
    row.refund_id, row.out_refund_no = refund.refund_id, refund.out_refund_no
    return row


@dataclass
class BillInjections:
    """Differences planted in the bill of one date, so reconciliation can be tested."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    by_date: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, date: str, kind: str, **fields: Any) -> dict[str, Any]:
        dt.date.fromisoformat(date)
        if kind not in INJECTION_KINDS:
            raise ValueError(f"kind must be one of {INJECTION_KINDS}")
        need = {
            "extra_paid": ("total",),
            "amount_changed": ("out_trade_no", "total"),
            "refund_removed": ("out_refund_no",),
            "refund_added": ("out_trade_no", "refund"),
        }[kind]
        missing = [name for name in need if name not in fields]
        if missing:
            raise ValueError(f"{kind} needs {', '.join(missing)}")
        injection = {"kind": kind, **fields}
        with self.lock:
            self.by_date.setdefault(date, []).append(injection)
        return injection

    def clear(self) -> None:
        with self.lock:
            self.by_date.clear()

    def for_date(self, date: str) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(i) for i in self.by_date.get(date, [])]


def _inject(rows: list[Row], injection: dict[str, Any], day: dt.date, store: Store) -> None:
    kind, noon = injection["kind"], dt.datetime.combine(day, dt.time(12), tzinfo=CST)
    creds = store.credentials
    if kind == "extra_paid":
        rows.append(
            Row(
                noon,
                creds.app_id,
                creds.mch_id,
                injection.get("transaction_id") or new_transaction_id(noon),
                injection.get("out_trade_no") or "X" + "".join(random.choices(string.digits, k=20)),
                injection.get("openid") or new_openid(),
                injection.get("trade_type", "NATIVE"),
                "OTHERS",
                injection.get("description", "未知订单"),
                "",
                total=int(injection["total"]),
            )
        )
    elif kind == "amount_changed":
        for row in rows:
            if row.out_trade_no == injection["out_trade_no"] and not row.is_refund:
                row.total = int(injection["total"])
    elif kind == "refund_removed":
        rows[:] = [row for row in rows if row.out_refund_no != injection["out_refund_no"]]
    elif kind == "refund_added":
        order = store.orders.get(injection["out_trade_no"])
        base = (
            _paid_row(order)
            if order is not None and order.transaction_id
            else Row(
                noon,
                creds.app_id,
                creds.mch_id,
                new_transaction_id(noon),
                injection["out_trade_no"],
                new_openid(),
                "NATIVE",
                "OTHERS",
                "未知订单",
                "",
            )
        )
        base.time, base.total, base.refund = noon, 0, int(injection["refund"])
        base.refund_id = injection.get("refund_id") or "50" + "".join(random.choices(string.digits, k=27))
        base.out_refund_no = injection.get("out_refund_no") or "R" + "".join(
            random.choices(string.digits, k=20)
        )
        rows.append(base)


def trade_bill(store: Store, injections: BillInjections, date: str, bill_type: str = "ALL") -> str | None:
    """The CSV text of the bill for ``date`` (YYYY-MM-DD), or None when there is nothing to bill."""
    day = dt.date.fromisoformat(date)
    with store.lock:
        rows = [
            _paid_row(o)
            for o in store.orders.values()
            if o.success_time and o.success_time.astimezone(CST).date() == day
        ]
        rows += [
            _refund_row(r)
            for r in store.refunds.values()
            if r.status == "SUCCESS" and r.success_time and r.success_time.astimezone(CST).date() == day
        ]
        planted = injections.for_date(date)
        for injection in planted:
            _inject(rows, injection, day, store)
    if not rows and not planted:
        return None
    if bill_type == "SUCCESS":
        rows = [row for row in rows if not row.is_refund]
    elif bill_type == "REFUND":
        rows = [row for row in rows if row.is_refund]
    rows.sort(key=lambda row: row.time)
    lines = [DETAIL_HEADER]
    lines += [",".join("`" + value for value in row.fields()) for row in rows]
    totals = [
        len(rows),
        sum(r.total for r in rows),
        sum(r.refund for r in rows),
        0,
        sum(-fee(r.refund) if r.is_refund else fee(r.total) for r in rows),
        sum(r.total for r in rows),
        sum(r.refund for r in rows),
    ]
    lines.append(SUMMARY_HEADER)
    lines.append(",".join("`" + (str(v) if i == 0 else yuan(v)) for i, v in enumerate(totals)))
    return "\r\n".join(lines) + "\r\n"
