"""退款 <编号> <金额> <原因> (finance, admin) → a preview → 确认 / 取消.

The preview is kept in ``chat_pending_refunds`` (at most one per staff member, with the request number
the refund will carry, so a 确认 retried by WeChat can never refund twice). 确认 and 取消 act on the
newest preview: a pending refund or a draft bill (handlers/staff.py).
"""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import BigInteger, ForeignKey, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from bot.replies import Reply, TextReply
from db import Base, UTCDateTime, utcnow
from handlers import staff
from handlers.context import Ctx
from handlers.lookup import staff_bill
from handlers.models import PendingDraft
from handlers.views import money
from payments import services
from payments.errors import InvalidInput, RefundNotAllowed
from payments.models import REFUNDABLE, STATUS_LABELS, Bill, PaymentMethod, Refund, RefundStatus
from payments.money import chinese_capital, parse_amount


class PendingRefund(Base):
    """The refund a finance staff member previewed and has not yet confirmed (at most one each)."""

    __tablename__ = "chat_pending_refunds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id"), unique=True)
    bill_id: Mapped[int] = mapped_column(ForeignKey("bills.id"))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(80))
    request_no: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


def refundable_fen(bill: Bill) -> int:
    """Paid − refunded − refunds in flight, the same rule ``services.request_refund`` applies."""
    return sum(services.payment_refundable_fen(p) for p in bill.payments)


def refund(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    member = ctx.require_staff()
    bill = staff_bill(ctx.session, args[0])
    amount = parse_amount(args[1], max_fen=ctx.settings.max_bill_fen)
    reason = " ".join(args[2:]).strip()[:80]
    if not reason:
        raise InvalidInput("请说明退款原因，例如：退款 B2611-0042 500 少做一项吊顶")
    if bill.status not in REFUNDABLE:
        raise RefundNotAllowed(f"账单 {bill.number} 没有可退的款项")
    available = refundable_fen(bill)
    if amount > available:
        raise RefundNotAllowed(f"退款金额超过可退金额，目前最多可退 {money(available)}")
    pending = _pending_refund(ctx)
    if pending is None:
        pending = PendingRefund(staff_id=member.id)
        ctx.session.add(pending)
    pending.bill_id, pending.amount_fen, pending.reason = bill.id, amount, reason
    pending.request_no = "CR-" + secrets.token_hex(8).upper()
    pending.created_at = utcnow()
    return TextReply(_preview(bill, amount, reason, available))


def _preview(bill: Bill, amount: int, reason: str, available: int) -> str:
    offline = any(p.method is not PaymentMethod.wechat for p in bill.payments)
    how = "；线下收款部分登记为线下退款，请另行把钱交给客户。" if offline else "。"
    return "\n".join(
        [
            "请核对退款：",
            f"账单：{bill.number} {bill.customer.name} {bill.stage}（{STATUS_LABELS[bill.status]}）",
            f"已付：{money(bill.paid_fen)}，已退：{money(bill.refunded_fen)}，可退：{money(available)}",
            f"退款金额：{money(amount)}（{chinese_capital(amount)}）",
            f"原因：{reason}",
            "微信支付的款项原路退回" + how,
            "回复“确认”提交退款，回复“取消”放弃。",
        ]
    )


def _pending_refund(ctx: Ctx) -> PendingRefund | None:
    return ctx.session.execute(
        select(PendingRefund).where(PendingRefund.staff_id == ctx.require_staff().id).with_for_update()
    ).scalar_one_or_none()


def _refund_is_newest(ctx: Ctx, pending: PendingRefund | None) -> bool:
    if pending is None:
        return False
    draft_at = ctx.session.execute(
        select(PendingDraft.created_at).where(PendingDraft.staff_id == ctx.require_staff().id)
    ).scalar_one_or_none()
    return draft_at is None or pending.created_at >= draft_at


def confirm(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    pending = _pending_refund(ctx)
    if pending is None or not _refund_is_newest(ctx, pending):
        return staff.confirm(ctx, args)
    refunds = services.request_refund(
        ctx.session,
        bill_id=pending.bill_id,
        amount_fen=pending.amount_fen,
        reason=pending.reason,
        request_no=pending.request_no,
        source="chat",
        requested_by_id=ctx.require_staff().id,
    )
    bill_id = pending.bill_id
    ctx.session.delete(pending)
    return TextReply(_confirmed(ctx.session.get_one(Bill, bill_id), refunds))


def _confirmed(bill: Bill, refunds: list[Refund]) -> str:
    total = sum(r.amount_fen for r in refunds)
    offline = sum(r.amount_fen for r in refunds if r.status is RefundStatus.succeeded)
    lines = [f"已提交退款 {money(total)}（账单 {bill.number}，退款单号 {refunds[0].request_no}）。"]
    if offline:
        lines.append(f"其中线下收款部分 {money(offline)} 已登记为线下退款，请把钱交给客户。")
    if total > offline:
        lines.append("微信支付部分将原路退回，通常几分钟内到账，结果会通知客户和财务。")
    return "\n".join(lines)


def cancel(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    pending = _pending_refund(ctx)
    if pending is None or not _refund_is_newest(ctx, pending):
        return staff.cancel(ctx, args)
    number = ctx.session.get_one(Bill, pending.bill_id).number
    ctx.session.delete(pending)
    return TextReply(f"已取消对账单 {number} 的退款。")
