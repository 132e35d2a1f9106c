"""Customer commands (账单, 支付, 收据, 帮助, 人工) and events (subscribe, SCAN, menu CLICK)."""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Row, bindparam, or_, select

from bot.menu import CONTACT_SERVICE, MY_BILLS, PAY_HELP
from bot.replies import MAX_ARTICLES, Article, NewsReply, NoReply, Reply, TextReply, TransferReply
from handlers.context import Ctx
from handlers.grammar import Audience, help_text
from handlers.identity import bind_scene
from handlers.lookup import bill_number_of, own_bill
from handlers.staff import receipts_text
from handlers.views import money
from payments.links import Links
from payments.models import PAYABLE, STATUS_LABELS, Bill

NOT_BOUND = "您的微信还没有绑定客户资料。请联系为您服务的工作人员，扫描他们发给您的二维码完成绑定。"
NO_BILLS = "您目前没有待支付的账单。"
_OUTSTANDING: Callable[[Any], int] = Bill.outstanding_fen.fget  # type: ignore[assignment]
PAY_HELP_TEXT = (
    "支付方法：发送“账单”查看待支付账单，点开账单即可用微信支付。\n"
    "金额较大时可以分次支付，每次输入本次要付的金额。\n"
    "支付完成后会收到收据通知，也可以发送“收据 <账单编号>”查看。"
)


def _article(links: Links, bill: Bill | Row[Any]) -> Article:
    """A bill's news article; ``bill`` is a Bill or a row of the columns used here (``_OPEN_BILLS``)."""
    outstanding = _OUTSTANDING(bill)  # Bill's own rule, applied to the row as well
    day = int(time.time()) // 86_400  # pay links are signed per UTC day (payments.links)
    return _article_of(links, day, bill.number, bill.title, bill.amount_fen, bill.paid_fen, outstanding,
                       bill.due_date)


@functools.lru_cache(maxsize=4096)
def _article_of(links: Links, day: int, number: str, title: str, amount_fen: int, paid_fen: int,
                outstanding_fen: int, due_date: dt.date | None) -> Article:
    """An article is a pure function of these values (the signed link is the same string all day), so a
    bill list repeated the same day reuses it: signing the pay links was the largest share of 我的账单."""
    due = f"，到期日 {due_date.isoformat()}" if due_date else ""
    return Article(
        title=f"{number} {title} 待付 {money(outstanding_fen)}",
        description=f"账单金额 {money(amount_fen)}，已付 {money(paid_fen)}{due}。点击查看并支付。",
        url=links.pay_url(number),
    )


# Built once, columns only, run on the session's connection (the hottest customer query: loading ORM
# objects cost more than the SQL); equalities rather than IN, which is re-rendered on every execution.
# A news reply holds at most 8 articles. The read-only path fetches the same columns joined to the
# sender's row (``handlers.router``), so 我的账单 costs one statement there.
OPEN_BILL_COLUMNS = (Bill.number, Bill.title, Bill.amount_fen, Bill.paid_fen, Bill.status, Bill.due_date)
IS_OPEN = or_(*(Bill.status == s for s in sorted(PAYABLE)))
_OPEN_BILLS = (
    select(*OPEN_BILL_COLUMNS).where(Bill.customer_id == bindparam("customer_id"), IS_OPEN)
    .order_by(Bill.id).limit(MAX_ARTICLES)
)


def my_bills(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    customer_id = ctx.customer_id
    if customer_id is None:
        return TextReply(NOT_BOUND)
    bills = ctx.open_bills
    if bills is None:
        bills = ctx.session.connection().execute(_OPEN_BILLS, {"customer_id": customer_id}).all()
    if not bills:
        return TextReply(NO_BILLS)
    links = ctx.links
    return NewsReply(tuple(_article(links, b) for b in bills))


def pay(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    bill = own_bill(ctx.session, ctx.customer_id, args[0])
    if bill.status not in PAYABLE:
        return TextReply(f"账单 {bill.number} 当前状态为“{STATUS_LABELS[bill.status]}”，无需支付。")
    return NewsReply((_article(ctx.links, bill),))


def receipts(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    number = bill_number_of(ctx.session, args[0])
    return TextReply(receipts_text(ctx, own_bill(ctx.session, ctx.customer_id, number)))


def help_(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    return TextReply(help_text(Audience.customer))


def human(ctx: Ctx, args: tuple[str, ...]) -> Reply:
    return TransferReply()


def greeting(ctx: Ctx) -> str:
    return f"您好，欢迎关注{ctx.settings.company_name}！发送“账单”查看待支付账单，发送“帮助”查看全部功能。"


def on_subscribe(ctx: Ctx) -> Reply:
    key = ctx.inbound.event_key
    if key.startswith("qrscene_"):
        return TextReply(greeting(ctx) + "\n" + bind_scene(ctx, key.removeprefix("qrscene_")))
    return TextReply(greeting(ctx))


def on_scan(ctx: Ctx) -> Reply:
    return TextReply(bind_scene(ctx, ctx.inbound.event_key) + "发送“账单”查看待支付账单。")


def on_click(ctx: Ctx) -> Reply:
    match ctx.inbound.event_key:
        case key if key == MY_BILLS:
            return my_bills(ctx, ())
        case key if key == PAY_HELP:
            return TextReply(PAY_HELP_TEXT)
        case key if key == CONTACT_SERVICE:
            return TransferReply()
    return NoReply()
