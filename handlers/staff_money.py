"""Staff commands about money: 收款 (finance only), 今日 and 本月 (from the ledger)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

from bot.replies import Reply, TextReply
from db import CHINA_TZ
from handlers.context import Ctx
from handlers.lookup import staff_bill
from handlers.views import china_today, money
from payments import services
from payments.errors import InvalidInput
from payments.models import PAYABLE, STATUS_LABELS, Bill, Payment, PaymentMethod, Refund, RefundStatus
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
    s = ctx.session
    collected, count = s.execute(
        select(func.coalesce(func.sum(Payment.amount_fen - Payment.excess_fen), 0), func.count(Payment.id))
        .where(Payment.paid_at >= begin, Payment.paid_at < end)
    ).one()
    refunded = s.execute(
        select(func.coalesce(func.sum(Refund.amount_fen), 0)).where(
            Refund.status == RefundStatus.succeeded, Refund.finished_at >= begin, Refund.finished_at < end
        )
    ).scalar_one()
    outstanding, open_count = s.execute(
        select(func.coalesce(func.sum(Bill.amount_fen - Bill.paid_fen), 0), func.count(Bill.id))
        .where(Bill.status.in_(PAYABLE))
    ).one()
    return TextReply(
        f"{label}\n收款：{money(int(collected))}（{count} 笔）\n退款：{money(int(refunded))}\n"
        f"当前待收：{money(int(outstanding))}（{open_count} 张账单）"
    )


def today(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    return _totals(ctx, "today")


def month(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    return _totals(ctx, "month")
