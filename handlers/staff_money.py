"""Staff commands about money: 收款 (finance only), 今日 and 本月 (from the ledger)."""

from __future__ import annotations

import datetime as dt

from bot.replies import Reply, TextReply
from db import CHINA_TZ
from handlers.context import Ctx
from handlers.lookup import staff_bill
from handlers.views import china_today, money
from payments import reports, services
from payments.errors import InvalidInput
from payments.models import STATUS_LABELS, PaymentMethod
from payments.money import parse_amount

METHODS = {
    "转账": PaymentMethod.transfer, "银行转账": PaymentMethod.transfer, "transfer": PaymentMethod.transfer,
    "现金": PaymentMethod.cash, "cash": PaymentMethod.cash,
}
METHOD_LABELS = {PaymentMethod.transfer: "转账", PaymentMethod.cash: "现金"}


def collect(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    staff = ctx.require_staff()
    bill = staff_bill(ctx.session, args[0])
    amount = parse_amount(args[1], max_fen=ctx.settings.max_bill_fen)
    method = METHODS.get(args[2].lower())
    if method is None:
        raise InvalidInput("收款方式只能是“转账”或“现金”。")
    payment = services.record_offline_payment(
        ctx.session, bill.id, amount_fen=amount, method=method, staff_id=staff.id, note=" ".join(args[3:]),
    )
    return TextReply(
        f"已登记{METHOD_LABELS[method]}收款 {money(amount)}，收据 {payment.receipt_no}。\n"
        f"账单 {bill.number}：{STATUS_LABELS[bill.status]}，待付 {money(bill.outstanding_fen)}。\n"
        f"收据链接：{ctx.links.receipt_url(payment.receipt_no)}"
    )


def _period(days: str) -> tuple[dt.datetime, dt.datetime, str]:
    today = china_today()
    start = today if days == "today" else today.replace(day=1)
    begin = dt.datetime.combine(start, dt.time(), CHINA_TZ)
    end = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), CHINA_TZ)
    if days == "today":
        label = f"今日（{today.month}月{today.day}日）"
    else:
        label = f"本月（{today.year}年{today.month}月）"
    return begin, end, label


def _totals(ctx: Ctx, which: str) -> Reply:
    begin, end, label = _period(which)
    totals = reports.summarize(ctx.session, begin, end).total  # the same figures as the monthly report
    outstanding, open_count = reports.outstanding(ctx.session)
    fee = f"，手续费 {money(totals.fee_fen)}" if totals.fee_fen else ""
    return TextReply(
        f"{label}\n收款：{money(totals.collected_fen)}（{totals.payments} 笔）\n"
        f"退款：{money(totals.refunded_fen)}（{totals.refunds} 笔）\n净额：{money(totals.net_fen)}{fee}\n"
        f"当前待收：{money(outstanding)}（{open_count} 张账单）"
    )


def today(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    return _totals(ctx, "today")


def month(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    return _totals(ctx, "month")
