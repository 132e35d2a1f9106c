"""Opening a WeChat order for a bill: the attempt row is committed first, WeChat is called outside any
database transaction, and what WeChat answered is stored afterwards.

Why this order: a crash between the steps leaves a pending attempt that recovery can query, never a
WeChat order we don't know about; and no row lock is held while we wait on the network. Creating an
order again with identical parameters returns the same prepay_id / code_url, so a retry after a
timeout reuses the attempt safely.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import Database
from payments import services
from payments.errors import DomainError
from payments.models import Bill, Channel, Customer
from payments.wechatpay import PermanentError, RetryableError, WeChatPayGateway

log = logging.getLogger("renopay.payments")


class PaymentUnavailable(DomainError):
    code = "payment_unavailable"
    http_status = 503
    default_message = "微信支付暂时不可用，请稍后再试"


@dataclass(frozen=True)
class OpenAttempt:
    attempt_id: int
    out_trade_no: str
    channel: Channel
    amount_fen: int
    prepay_id: str | None = None
    code_url: str | None = None


@dataclass(frozen=True)
class CheckoutPolicy:
    min_partial_fen: int
    ttl: dt.timedelta
    company_name: str = ""


def order_description(company: str, bill: Bill) -> str:
    """Deterministic per bill: recreating an order must send identical parameters."""
    return f"{company} {bill.number} {bill.title}".strip()[:127]


def open_attempt(
    db: Database,
    gateway: WeChatPayGateway,
    policy: CheckoutPolicy,
    bill_id: int,
    *,
    channel: Channel,
    amount_fen: int | None = None,
    payer_openid: str | None = None,
) -> OpenAttempt:
    """Return the open attempt (with its prepay_id or code_url) for paying ``amount_fen`` of a bill."""
    with db.transaction() as session:
        start = services.start_attempt(
            session,
            bill_id,
            channel=channel,
            amount_fen=amount_fen,
            payer_openid=payer_openid,
            min_fen=policy.min_partial_fen,
            ttl=policy.ttl,
        )
        attempt = start.attempt
        bill = session.get_one(Bill, bill_id)
        description = order_description(policy.company_name, bill)
        opened = OpenAttempt(
            attempt.id,
            attempt.out_trade_no,
            attempt.channel,
            attempt.amount_fen,
            attempt.prepay_id,
            attempt.code_url,
        )
        expires_at = attempt.expires_at
    if opened.prepay_id or opened.code_url:
        return opened
    try:
        if channel is Channel.jsapi:
            assert payer_openid is not None
            prepay_id = gateway.create_jsapi_order(
                out_trade_no=opened.out_trade_no,
                amount_fen=opened.amount_fen,
                description=description,
                payer_openid=payer_openid,
                expires_at=expires_at,
            )
            code_url = None
        else:
            code_url = gateway.create_native_order(
                out_trade_no=opened.out_trade_no,
                amount_fen=opened.amount_fen,
                description=description,
                expires_at=expires_at,
            )
            prepay_id = None
    except PermanentError as exc:
        log.warning("order %s refused by WeChat Pay: %s", opened.out_trade_no, exc.code)
        with db.transaction() as session:
            services.fail_attempt(session, opened.attempt_id, reason=f"{exc.code}: {exc.detail}")
        raise PaymentUnavailable("微信支付暂时无法为这张账单下单，请稍后再试或联系我们") from exc
    except RetryableError as exc:
        # The attempt stays pending; the next request recreates it with identical parameters.
        log.warning("order %s not created yet: %s", opened.out_trade_no, exc.code)
        raise PaymentUnavailable() from exc
    with db.transaction() as session:
        services.record_order_created(session, opened.attempt_id, prepay_id=prepay_id, code_url=code_url)
    return OpenAttempt(
        opened.attempt_id, opened.out_trade_no, channel, opened.amount_fen, prepay_id, code_url
    )


def bind_customer_openid(session: Session, bill: Bill, openid: str) -> bool:
    """On a first payment through the pay link, the payer becomes the bill's customer's WeChat identity.

    Only an unbound customer is bound, and only to an openid no other customer holds: a relative who
    pays for someone else never takes over that person's account.
    """
    customer = session.get_one(Customer, bill.customer_id)
    if customer.openid is not None:
        return False
    holder = session.execute(select(Customer.id).where(Customer.openid == openid)).scalar_one_or_none()
    if holder is not None:
        return False
    customer.openid = openid
    return True
