"""The router: who is writing (staff by role, customer, stranger) × which command word → a handler.

Domain errors become polite replies here and nowhere else. Every staff command is audited, and so
is a staff command tried by someone who is not staff — who gets the same answer as for gibberish.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from bot.replies import NoReply, Reply, TextReply
from bot.wire import Inbound
from db import utcnow
from handlers import customer, staff, staff_money, staff_refund
from handlers.context import Ctx, identify
from handlers.grammar import ROLE_LABELS, Audience, Command, Parsed, help_text, parse, usage_text
from handlers.identity import bind_staff
from payments.errors import DomainError

Handler = Callable[[Ctx, tuple[str, ...]], Reply]

UNKNOWN = "没有听懂您的消息。发送“帮助”查看可用的功能。"
ONLY_TEXT = "目前只能处理文字消息。发送“帮助”查看可用的功能。"

STAFF: dict[str, Handler] = {
    "issue": staff.issue, "confirm": staff_refund.confirm, "cancel": staff_refund.cancel, "show": staff.show,
    "unpaid": staff.unpaid, "remind": staff.remind, "void": staff.void, "qr": staff.qr,
    "receipts": staff.receipts, "invite": staff.invite, "collect": staff_money.collect,
    "today": staff_money.today, "month": staff_money.month, "refund": staff_refund.refund,
    "help": lambda ctx, _: TextReply(help_text(Audience.staff, str(ctx.require_staff().role))),
}
CUSTOMER: dict[str, Handler] = {
    "my_bills": customer.my_bills, "pay": customer.pay, "receipts": customer.receipts,
    "help": customer.help_, "human": customer.human,
}
ANYONE: dict[str, Handler] = {"bind_staff": lambda ctx, args: bind_staff(ctx, args[0])}
EVENTS: dict[str, Callable[[Ctx], Reply]] = {
    "subscribe": customer.on_subscribe, "scan": customer.on_scan, "click": customer.on_click,
}


# What opens WeChat's 48-hour customer-service window: any message, and these events (a VIEW of a
# menu link, an unsubscribe or a template delivery report do not).
WINDOW_EVENTS = frozenset({"subscribe", "scan", "click", "scancode_push", "scancode_waitmsg"})


def route(session: Session, inbound: Inbound) -> Reply:
    ctx = identify(session, inbound)
    opens_window = inbound.msg_type != "event" or (inbound.event or "").lower() in WINDOW_EVENTS
    if ctx.customer is not None and opens_window:
        ctx.customer.last_message_at = utcnow()  # the fallback for undeliverable template notices
    if inbound.msg_type == "event":
        handler = EVENTS.get(inbound.event or "")
        return _safely(ctx, lambda: handler(ctx))[0] if handler else NoReply()
    if inbound.msg_type != "text":
        return TextReply(ONLY_TEXT)
    return _on_text(ctx)


def _on_text(ctx: Ctx) -> Reply:
    text = ctx.inbound.content
    if ctx.staff is not None:
        parsed = parse(text, Audience.staff)
        return _run_staff(ctx, parsed) if parsed else TextReply(UNKNOWN)
    parsed = parse(text, Audience.customer)
    if parsed is not None:
        is_anyone = parsed.command.audience is Audience.anyone
        return _run(ctx, parsed, (ANYONE | CUSTOMER)[parsed.command.key], audit=is_anyone)
    as_staff = parse(text, Audience.staff)
    if as_staff is not None:
        ctx.audit(as_staff.command.key, "denied", reason="not staff")
    return TextReply(UNKNOWN)


def _run_staff(ctx: Ctx, parsed: Parsed) -> Reply:
    command, staff_member = parsed.command, ctx.require_staff()
    if str(staff_member.role) not in command.roles:
        ctx.audit(command.key, "denied", role=str(staff_member.role))
        role = ROLE_LABELS[str(staff_member.role)]
        return TextReply(f"你的角色（{role}）不能使用“{command.words[0]}”，请联系财务。")
    handlers = ANYONE if command.audience is Audience.anyone else STAFF
    return _run(ctx, parsed, handlers[command.key], audit=True)


def _run(ctx: Ctx, parsed: Parsed, handler: Handler, *, audit: bool) -> Reply:
    command: Command = parsed.command
    if len(parsed.args) < command.min_args:
        if audit:
            ctx.audit(command.key, "refused", reason="usage")
        return TextReply(usage_text(command))
    reply, error = _safely(ctx, lambda: handler(ctx, parsed.args))
    if audit and command.key != "bind_staff":  # bind_staff audits its own outcome
        ctx.audit(command.key, "refused" if error else "ok", **({"error": error.code} if error else {}))
    return reply


def _safely(ctx: Ctx, call: Callable[[], Reply]) -> tuple[Reply, DomainError | None]:
    """Run a handler in a savepoint: a domain error rolls back its partial work and becomes a reply."""
    try:
        with ctx.session.begin_nested():
            return call(), None
    except DomainError as exc:
        return TextReply(exc.message), exc
