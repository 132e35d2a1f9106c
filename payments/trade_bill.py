"""WeChat Pay's trade bill (交易账单): parsing its CSV and matching it against our ledger. Pure: no I/O.

The file (ALL bill type): a detail header, one line per order paid or refund succeeded that day, every
field prefixed with a backtick and amounts in yuan; then a summary header and one summary line.
Amounts become fen once, here, with :func:`payments.money.yuan_str_to_fen`.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from db import CHINA_TZ
from payments.money import yuan_str_to_fen

DETAIL_COLUMNS = {
    "time": "交易时间",
    "appid": "公众账号ID",
    "mchid": "商户号",
    "transaction_id": "微信订单号",
    "out_trade_no": "商户订单号",
    "openid": "用户标识",
    "trade_type": "交易类型",
    "trade_state": "交易状态",
    "total": "应结订单金额",
    "refund_id": "微信退款单号",
    "out_refund_no": "商户退款单号",
    "refund": "退款金额",
    "fee": "手续费",
}
SUMMARY_FIRST_COLUMN = "总交易单数"


class TradeBillFormatError(ValueError):
    """The file is not a WeChat trade bill we can read; nothing is matched or healed."""


@dataclass(frozen=True)
class BillRow:
    time: dt.datetime
    appid: str
    mchid: str
    transaction_id: str
    out_trade_no: str
    openid: str
    trade_type: str
    total_fen: int  # 应结订单金额 (0 on refund rows)
    refund_fen: int  # 退款金额 (0 on paid rows)
    fee_fen: int  # 手续费: positive on paid rows, negative (returned) on refund rows
    out_refund_no: str | None = None

    @property
    def is_refund(self) -> bool:
        return self.out_refund_no is not None


@dataclass(frozen=True)
class TradeBillFile:
    rows: tuple[BillRow, ...]
    summary: Mapping[str, str]

    @property
    def fee_fen(self) -> int:
        return sum(r.fee_fen for r in self.rows)


def _clean(value: str) -> str:
    return value.strip().removeprefix("`").strip()


def _row(record: Mapping[str, str]) -> BillRow:
    get = {key: _clean(record.get(column) or "") for key, column in DETAIL_COLUMNS.items()}
    refund = get["refund_id"] not in ("", "0") or get["trade_state"] == "REFUND"
    try:
        return BillRow(
            time=dt.datetime.strptime(get["time"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA_TZ),
            appid=get["appid"],
            mchid=get["mchid"],
            transaction_id=get["transaction_id"],
            out_trade_no=get["out_trade_no"],
            openid=get["openid"],
            trade_type=get["trade_type"],
            total_fen=0 if refund else yuan_str_to_fen(get["total"] or "0"),
            refund_fen=yuan_str_to_fen(get["refund"] or "0") if refund else 0,
            fee_fen=yuan_str_to_fen(get["fee"] or "0"),
            out_refund_no=get["out_refund_no"] if refund else None,
        )
    except (ValueError, ArithmeticError) as exc:
        raise TradeBillFormatError(f"unreadable bill line: {exc}") from exc


def parse_trade_bill(text: str) -> TradeBillFile:
    """Detail rows and the summary of a trade bill's CSV text."""
    lines = [line for line in text.lstrip("\ufeff").splitlines() if line.strip()]
    if not lines or _clean(lines[0].split(",")[0]) != DETAIL_COLUMNS["time"]:
        raise TradeBillFormatError("not a trade bill: the detail header is missing")
    split = next(
        (i for i, line in enumerate(lines) if _clean(line.split(",")[0]) == SUMMARY_FIRST_COLUMN), None
    )
    if split is None:
        raise TradeBillFormatError("not a trade bill: the summary section is missing")
    details = csv.DictReader(io.StringIO("\n".join(lines[:split])))
    rows = tuple(_row(record) for record in details)
    summary_lines = list(csv.reader(io.StringIO("\n".join(lines[split : split + 2]))))
    header, values = summary_lines[0], summary_lines[1] if len(summary_lines) > 1 else []
    summary = {_clean(k): _clean(v) for k, v in zip(header, values, strict=False)}
    if summary.get(SUMMARY_FIRST_COLUMN, str(len(rows))) != str(len(rows)):
        raise TradeBillFormatError("the summary's row count does not match the detail lines")
    return TradeBillFile(rows, summary)


# ------------------------------------------------------------------------------------------ matching


@dataclass(frozen=True)
class OurPayment:
    transaction_id: str
    amount_fen: int
    receipt_no: str
    on_bill_date: bool  # paid (WeChat's success_time) on the bill's date


@dataclass(frozen=True)
class OurRefund:
    out_refund_no: str
    amount_fen: int
    status: str
    on_bill_date: bool  # finished (succeeded here) on the bill's date


@dataclass
class Matching:
    """The bill against our ledger. Each difference is a plain dict (stored as JSON)."""

    missing_ours: list[dict[str, Any]] = field(default_factory=list)  # at WeChat, not here
    missing_wechat: list[dict[str, Any]] = field(default_factory=list)  # here, not at WeChat
    amount_differences: list[dict[str, Any]] = field(default_factory=list)
    matched_payments: int = 0
    matched_refunds: int = 0

    @property
    def clean(self) -> bool:
        return not (self.missing_ours or self.missing_wechat or self.amount_differences)


def match(
    rows: Iterable[BillRow], payments: Mapping[str, OurPayment], refunds: Mapping[str, OurRefund]
) -> Matching:
    """Classify every bill row against our payments (by transaction_id) and refunds (by out_refund_no),
    then list what we hold for that date that WeChat does not."""
    result = Matching()
    seen_payments: set[str] = set()
    seen_refunds: set[str] = set()
    for row in rows:
        if row.is_refund:
            assert row.out_refund_no is not None
            seen_refunds.add(row.out_refund_no)
            ours_refund = refunds.get(row.out_refund_no)
            if ours_refund is None or ours_refund.status != "succeeded":
                result.missing_ours.append(_refund_item(row, ours_refund))
            elif ours_refund.amount_fen != row.refund_fen:
                result.amount_differences.append(
                    {
                        "type": "refund",
                        "out_refund_no": row.out_refund_no,
                        "wechat_fen": row.refund_fen,
                        "ours_fen": ours_refund.amount_fen,
                    }
                )
            else:
                result.matched_refunds += 1
            continue
        seen_payments.add(row.transaction_id)
        ours_payment = payments.get(row.transaction_id)
        if ours_payment is None:
            result.missing_ours.append(_payment_item(row))
        elif ours_payment.amount_fen != row.total_fen:
            result.amount_differences.append(
                {
                    "type": "payment",
                    "transaction_id": row.transaction_id,
                    "out_trade_no": row.out_trade_no,
                    "receipt_no": ours_payment.receipt_no,
                    "wechat_fen": row.total_fen,
                    "ours_fen": ours_payment.amount_fen,
                }
            )
        else:
            result.matched_payments += 1
    for no, payment in payments.items():
        if payment.on_bill_date and no not in seen_payments:
            result.missing_wechat.append(
                {
                    "type": "payment",
                    "transaction_id": no,
                    "receipt_no": payment.receipt_no,
                    "amount_fen": payment.amount_fen,
                }
            )
    for no, refund in refunds.items():
        if refund.on_bill_date and refund.status == "succeeded" and no not in seen_refunds:
            result.missing_wechat.append(
                {"type": "refund", "out_refund_no": no, "amount_fen": refund.amount_fen}
            )
    return result


def _payment_item(row: BillRow) -> dict[str, Any]:
    return {
        "type": "payment",
        "transaction_id": row.transaction_id,
        "out_trade_no": row.out_trade_no,
        "amount_fen": row.total_fen,
        "time": row.time.isoformat(),
    }


def _refund_item(row: BillRow, ours: OurRefund | None) -> dict[str, Any]:
    return {
        "type": "refund",
        "out_refund_no": row.out_refund_no,
        "transaction_id": row.transaction_id,
        "amount_fen": row.refund_fen,
        "ours_status": ours.status if ours else None,
        "time": row.time.isoformat(),
    }
