"""Staff commands about bills: 开单 → 确认/取消, 账单, 未付, 催款, 作废, 二维码, 收据, 邀请."""

from __future__ import annotations

from sqlalchemy import select

from bot.replies import NoReply, Reply, TextReply
from bot.tasks import enqueue
from handlers.context import Ctx
from handlers.identity import new_scene
from handlers.lookup import bill_number_of, resolve_customer, staff_bill
from handlers.models import PendingDraft
from handlers.views import (
    bill_detail,
    bill_line,
    bill_preview,
    china_today,
    looks_like_date,
    money,
    parse_due_date,
    payment_line,
)
from payments import services
from payments.errors import IllegalTransition, InvalidInput
from payments.models import PAYABLE, STAGES, Bill, BillSource, BillStatus, Customer
from payments.money import parse_amount


def issue(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    staff = ctx.require_staff()
    customer, rest = resolve_customer(ctx.session, args)
    if len(rest) < 2:
        raise InvalidInput("请写上金额和阶段，例如：开单 张三 13800138000 38000 首期款")
    amount = parse_amount(rest[0], max_fen=ctx.settings.max_bill_fen)
    tail = rest[1:]
    due = None
    if len(tail) > 1 and looks_like_date(tail[-1]):
        due, tail = parse_due_date(tail[-1], china_today()), tail[:-1]
    stage = next((t for t in tail if t in STAGES), "其他")
    pending = _pending(ctx)
    if pending is not None:
        _drop_draft(ctx, pending.bill_id)
    bill = services.issue_bill(
        ctx.session, customer=customer, amount_fen=amount, title=" ".join(tail), stage=stage,
        source=BillSource.chat, max_fen=ctx.settings.max_bill_fen, due_date=due, issued_by_id=staff.id,
    )
    if pending is None:
        ctx.session.add(PendingDraft(staff_id=staff.id, bill_id=bill.id))
    else:
        pending.bill_id = bill.id
    return TextReply(bill_preview(bill))


def _pending(ctx: Ctx) -> PendingDraft | None:
    return ctx.session.execute(
        select(PendingDraft).where(PendingDraft.staff_id == ctx.require_staff().id).with_for_update()
    ).scalar_one_or_none()


def _drop_draft(ctx: Ctx, bill_id: int) -> None:
    bill = ctx.session.get_one(Bill, bill_id)
    if bill.status is BillStatus.draft:
        services.cancel_draft(ctx.session, bill_id)


def confirm(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    pending = _pending(ctx)
    if pending is None:
        raise IllegalTransition("没有待确认的账单，请先发送“开单 …”。")
    bill = services.open_bill(ctx.session, pending.bill_id)
    ctx.session.delete(pending)
    if bill.customer.openid:
        told = "客户已关注公众号，将收到账单通知。"
    else:
        who = bill.customer.phone or bill.customer.name
        told = f"客户尚未绑定公众号：发送“邀请 {who}”获取绑定二维码，或把付款链接发给客户。"
    return TextReply(
        f"已开单 {bill.number}：{bill.customer.name} {bill.stage} {money(bill.amount_fen)}。\n{told}\n"
        f"付款链接：{ctx.links.pay_url(bill.number)}\n现场收款请发送“二维码 {bill.number}”。"
    )


def cancel(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    pending = _pending(ctx)
    if pending is None:
        raise IllegalTransition("没有待确认的账单。")
    number = ctx.session.get_one(Bill, pending.bill_id).number
    _drop_draft(ctx, pending.bill_id)
    ctx.session.delete(pending)
    return TextReply(f"已取消草稿 {number}。")


def show(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    bill = staff_bill(ctx.session, args[0])
    return TextReply(bill_detail(bill, ctx.links.pay_url(bill.number)))


def unpaid(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    query = select(Bill).where(Bill.status.in_(PAYABLE))
    query = query.order_by(Bill.due_date.is_(None), Bill.due_date, Bill.id)
    who = ""
    if args:
        customer, _ = resolve_customer(ctx.session, args[:1])
        query, who = query.where(Bill.customer_id == customer.id), customer.name
    bills = list(ctx.session.execute(query).scalars())
    if not bills:
        return TextReply(f"{who}没有待收款的账单。")
    total = sum(b.outstanding_fen for b in bills)
    lines = [bill_line(b) for b in bills[:10]]
    more = f"\n……另有 {len(bills) - 10} 张" if len(bills) > 10 else ""
    return TextReply(f"{who}待收款 {len(bills)} 张，共 {money(total)}：\n" + "\n".join(lines) + more)


def remind(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    bill = services.remind_bill(ctx.session, staff_bill(ctx.session, args[0]).id, today=china_today())
    return TextReply(f"已安排催款提醒：{bill_line(bill)}。")


def void(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    bill = services.void_bill(ctx.session, staff_bill(ctx.session, args[0]).id, reason=" ".join(args[1:]))
    return TextReply(f"账单 {bill.number} 已作废（{bill.void_reason}）。")


def qr(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    bill = staff_bill(ctx.session, args[0])
    if bill.status not in PAYABLE:
        raise IllegalTransition(f"账单 {bill.number} 当前不能收款。")
    payload = {"bill_id": bill.id, "number": bill.number, "line": bill_line(bill)}
    enqueue(ctx.session, "pay_qr", ctx.openid, payload)
    return NoReply()  # the image follows as a customer-service message


def receipts(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    return TextReply(receipts_text(ctx, staff_bill(ctx.session, bill_number_of(ctx.session, args[0]))))


def receipts_text(ctx: Ctx, bill: Bill) -> str:
    if not bill.payments:
        return f"账单 {bill.number} 还没有收款记录。"
    lines = [payment_line(p, ctx.links.receipt_url(p.receipt_no)) for p in bill.payments]
    return f"账单 {bill.number} 的收据：\n" + "\n".join(lines)


def invite(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    customer: Customer
    customer, _ = resolve_customer(ctx.session, args)
    if customer.openid:
        return TextReply(f"客户 {customer.name} 已绑定公众号。")
    scene = new_scene(ctx.session, customer, ctx.require_staff())
    enqueue(ctx.session, "invite_qr", ctx.openid, {"scene": scene.scene, "customer": customer.name})
    return NoReply()  # the QR image follows as a customer-service message
