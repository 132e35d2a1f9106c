"""How bills, money and dates read in chat. Formatting of money happens here and nowhere else."""

from __future__ import annotations

import datetime as dt
import re

from db import CHINA_TZ, utcnow
from payments.errors import InvalidInput
from payments.models import STATUS_LABELS, Bill, Payment
from payments.money import chinese_capital, format_fen

PHONE = re.compile(r"^1\d{10}$")
_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%Y年%m月%d日")
_SHORT_DATE = re.compile(r"^(\d{1,2})[-/.月](\d{1,2})日?$")


def china_today() -> dt.date:
    return utcnow().astimezone(CHINA_TZ).date()


def mask_phone(phone: str | None) -> str:
    return f"{phone[:3]}****{phone[-4:]}" if phone and len(phone) >= 7 else (phone or "—")


def looks_like_date(text: str) -> bool:
    return bool(_SHORT_DATE.match(text)) or any(_try_date(text, f) for f in _DATE_FORMATS)


def _try_date(text: str, fmt: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(text, fmt).date()
    except ValueError:
        return None


def parse_due_date(text: str, today: dt.date) -> dt.date:
    """``2026-12-10``, ``2026/12/10``, ``2026年12月10日``, or ``12-10`` / ``12月10日`` (this year or next)."""
    for fmt in _DATE_FORMATS:
        found = _try_date(text, fmt)
        if found:
            break
    else:
        m = _SHORT_DATE.match(text)
        try:
            found = dt.date(today.year, int(m[1]), int(m[2])) if m else None
        except ValueError:
            found = None
        if found and found < today:
            found = found.replace(year=today.year + 1)
    if found is None:
        raise InvalidInput(f"看不懂日期“{text[:20]}”，请写成 2026-12-10")
    if found < today:
        raise InvalidInput("到期日不能早于今天")
    return found


def money(fen: int) -> str:
    return format_fen(fen)


def bill_preview(bill: Bill) -> str:
    lines = [
        f"请核对账单（草稿 {bill.number}）：",
        f"客户：{bill.customer.name}（{mask_phone(bill.customer.phone)}）",
        f"金额：{money(bill.amount_fen)}（{chinese_capital(bill.amount_fen)}）",
        f"阶段：{bill.stage}",
        f"说明：{bill.title}",
    ]
    if bill.due_date:
        lines.append(f"到期日：{bill.due_date.isoformat()}")
    lines.append("回复“确认”开出账单，回复“取消”放弃。")
    return "\n".join(lines)


def bill_detail(bill: Bill, pay_url: str | None) -> str:
    lines = [
        f"账单 {bill.number}（{STATUS_LABELS[bill.status]}）",
        f"客户：{bill.customer.name}（{mask_phone(bill.customer.phone)}）",
        f"{bill.stage}：{bill.title}",
        f"金额：{money(bill.amount_fen)}，已付：{money(bill.paid_fen)}，待付：{money(bill.outstanding_fen)}",
    ]
    if bill.refunded_fen:
        lines.append(f"已退款：{money(bill.refunded_fen)}")
    if bill.due_date:
        lines.append(f"到期日：{bill.due_date.isoformat()}")
    if pay_url and bill.outstanding_fen:
        lines.append(f"付款链接：{pay_url}")
    return "\n".join(lines)


def bill_line(bill: Bill) -> str:
    return f"{bill.number} {bill.customer.name} {bill.stage} 待付 {money(bill.outstanding_fen)}"


def payment_line(payment: Payment, receipt_url: str) -> str:
    method = {"wechat": "微信支付", "transfer": "转账", "cash": "现金"}[str(payment.method)]
    when = payment.paid_at.astimezone(CHINA_TZ).strftime("%Y-%m-%d %H:%M")
    return f"{payment.receipt_no} {method} {money(payment.applied_fen)} {when}\n{receipt_url}"
