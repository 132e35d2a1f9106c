"""The router: who is writing (staff by role, customer, stranger) × which command word → a handler.

Domain errors become polite replies here and nowhere else. Every staff command is audited, and so
is a staff command tried by someone who is not staff — who gets the same answer as for gibberish.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlalchemy import Connection, and_, bindparam, exists, or_, select, update
from sqlalchemy.orm import Session

from bot.menu import CONTACT_SERVICE, MY_BILLS, PAY_HELP
from bot.replies import MAX_ARTICLES, NoReply, ReadAnswer, Reply, TextReply
from bot.wire import Inbound
from db import Prepared, pipeline, utcnow
from handlers import customer, staff, staff_money, staff_refund
from handlers.context import Ctx, identify
from handlers.grammar import ROLE_LABELS, Audience, Command, Parsed, help_text, parse, usage_text
from handlers.identity import bind_staff
from payments.errors import DomainError
from payments.models import Bill, Customer, Staff

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


# Customer commands and menu clicks that only read. They are answered from reads on a read-only
# connection, with no dedup row and no write transaction: there is no side effect for the dedup row to
# protect, and a retried push recomputes the same answer. Staff commands are audited (a write) and
# strangers have no customer row to carry the 48-hour window: both take the write path (``route``).
READ_ONLY_COMMANDS = frozenset({"my_bills", "pay", "receipts", "help", "human"})
READ_ONLY_CLICKS = frozenset({MY_BILLS, PAY_HELP, CONTACT_SERVICE})
# The 48-hour window marker is rewritten only once it is this old: the window may close this much
# early (never late), and a customer reading their bills rarely writes at all.
WINDOW_REFRESH = dt.timedelta(minutes=5)
# Who is writing, in one statement built once: the customer's id and window marker (columns, not an
# ORM object: no read-only handler needs more), whether the openid is staff, and the customer's open
# bills (one row per bill; one row of NULL bill columns when there are none) — what 我的账单 lists.
_IS_STAFF = exists().where(Staff.openid == bindparam("openid"), Staff.active.is_(True)).label("is_staff")
_SENDER = Prepared(
    select(Customer.id, Customer.last_message_at, _IS_STAFF, *customer.OPEN_BILL_COLUMNS)
    .select_from(Customer)
    .outerjoin(Bill, and_(Bill.customer_id == Customer.id, customer.IS_OPEN))
    .where(Customer.openid == bindparam("openid"))
    .order_by(Bill.id).limit(MAX_ARTICLES)
)


def read_only(connection: Connection, inbound: Inbound) -> ReadAnswer | None:
    """The answer to a read-only customer message, or None when the push needs ``route``. ``connection``
    is a read-only connection: the sender and their open bills come from one statement (consistent by
    itself, run on the DBAPI cursor with no BEGIN)."""
    parsed = parse(inbound.content, Audience.customer) if inbound.msg_type == "text" else None
    if parsed is not None and parsed.command.key not in READ_ONLY_COMMANDS:
        return None
    click = inbound.msg_type == "event" and inbound.event == "click" and inbound.event_key in READ_ONLY_CLICKS
    if parsed is None and not click:
        return None
    with pipeline(connection):  # PostgreSQL: the transaction's BEGIN and the read in one round trip
        sender = _SENDER.send(connection, {"openid": inbound.openid})
    rows = sender.all()
    if not rows or rows[0].is_staff:
        return None
    found = rows[0]
    bills = [row for row in rows if row.number is not None]
    # An ORM session on the same connection, opened only by the commands that load a bill (支付, 收据):
    # its reads may see a newer state than the sender row, and those handlers check the bill they load.
    ctx = Ctx(lambda: Session(bind=connection), inbound, None, None, known_customer_id=found.id,
              open_bills=bills)
    try:
        if parsed is None:
            reply = _read_safely(lambda: customer.on_click(ctx))
        elif len(parsed.args) < parsed.command.min_args:
            reply = TextReply(usage_text(parsed.command))
        else:
            reply = _read_safely(lambda: CUSTOMER[parsed.command.key](ctx, parsed.args))
    finally:
        if isinstance(ctx.opened, Session):
            ctx.opened.close()
    return ReadAnswer(reply, _window_refresh(found.id, found.last_message_at))


route.read_only = read_only  # type: ignore[attr-defined]  # the endpoint's read-only fast path


def _read_safely(call: Callable[[], Reply]) -> Reply:
    try:
        return call()
    except DomainError as exc:  # nothing was written, so no savepoint to roll back
        return TextReply(exc.message)


def _window_refresh(customer_id: int, last_message_at: dt.datetime | None,
                    ) -> Callable[[Session], None] | None:
    now = utcnow()
    if last_message_at is not None and now - last_message_at < WINDOW_REFRESH:
        return None

    def write(session: Session) -> None:  # never moves the marker backwards
        stale = or_(Customer.last_message_at.is_(None), Customer.last_message_at < now)
        session.execute(update(Customer).where(Customer.id == customer_id, stale).values(last_message_at=now))

    return write


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
