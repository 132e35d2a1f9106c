"""The pay page: ``GET /pay/<token>`` (bill in Chinese; JSAPI inside WeChat, Native QR outside),
``/pay/<token>/oauth`` (snsapi_base callback), ``POST /pay/<token>/jsapi`` (JSAPI attempt + bridge
parameters), ``/pay/<token>/status`` (polling JSON) and ``/pay/<token>/qr.png``.

Domain errors become pages (HTML routes) or ``{"error": {"code", "message"}}`` (JSON routes) here,
in this one module.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, redirect, render_template, request, session
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import select

from db import current_db
from payments.checkout import OpenAttempt, bind_customer_openid, open_attempt
from payments.errors import AmountExceedsOutstanding, DomainError, InvalidAmount
from payments.links import LinkInvalid, Links
from payments.models import STATUS_LABELS, Bill, BillStatus, Channel, PaymentAttempt
from payments.money import format_fen, parse_amount
from payments.qr import qr_png
from payments.runtime import checkout_policy, gateway, oauth_client, settings

log = logging.getLogger("renopay.payments.paypage")
bp = Blueprint("paypage", __name__, url_prefix="/pay")
static_bp = Blueprint("pay_static", __name__, static_folder="static", static_url_path="/pay-static")

OPENID_KEY = "renopay_openid"
OAUTH_NONCE_KEY = "renopay_oauth_nonce"
OAUTH_STATE_MAX_AGE = 600


# ----------------------------------------------------------------------------------------- helpers


def _bill_number(token: str) -> str:
    links: Links = current_app.extensions["renopay.links"]
    return links.bill_number_from_pay_token(token)  # LinkInvalid → the 404/410 page below


def _load_bill(token: str) -> Bill:
    number = _bill_number(token)
    with current_db().transaction() as s:
        bill = s.execute(select(Bill).where(Bill.number == number)).scalar_one_or_none()
        if bill is None:
            raise LinkInvalid()
        _ = bill.customer
        return bill


def in_wechat() -> bool:
    return "micromessenger" in request.headers.get("User-Agent", "").lower()


def _state_serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="renopay.oauth-state")


def _token_tag(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:10]


def _oauth_redirect(token: str) -> Any:
    """Send the browser to WeChat's authorize page; ``state`` is signed, short (WeChat allows 128
    bytes), tied to this link and to a nonce kept in the session, so it can be used once."""
    nonce = secrets.token_urlsafe(8)
    session[OAUTH_NONCE_KEY] = nonce
    state = _state_serializer().dumps([nonce, _token_tag(token)])
    callback = f"{settings().public_base_url.rstrip('/')}/pay/{token}/oauth"
    return redirect(oauth_client().oauth_authorize_url(callback, state), code=302)


def _json_error(exc: DomainError) -> tuple[Response, int]:
    return jsonify({"error": {"code": exc.code, "message": exc.message}}), exc.http_status


def _requested_amount(bill: Bill, raw: str | None) -> int | None:
    """``None`` = the whole outstanding amount; otherwise a checked partial amount in fen."""
    if raw is None or not raw.strip():
        return None
    amount = parse_amount(raw)
    if amount > bill.outstanding_fen:
        raise AmountExceedsOutstanding(f"金额不能超过待付金额 {format_fen(bill.outstanding_fen)}")
    minimum = min(settings().min_partial_payment_fen, bill.outstanding_fen)
    if amount < minimum:
        raise InvalidAmount(f"单次支付金额不能低于 {format_fen(minimum)}")
    return amount


def bill_status_view(bill: Bill) -> dict[str, Any]:
    return {
        "bill": bill.number,
        "status": str(bill.status),
        "status_label": STATUS_LABELS[bill.status],
        "amount_fen": bill.amount_fen,
        "paid_fen": bill.paid_fen,
        "outstanding_fen": bill.outstanding_fen,
        "paid_text": format_fen(bill.paid_fen),
        "outstanding_text": format_fen(bill.outstanding_fen),
        "payable": bill.status in (BillStatus.open, BillStatus.partially_paid),
    }


# ------------------------------------------------------------------------------------------ routes


@bp.get("/<token>")
def pay_page(token: str) -> Any:
    bill = _load_bill(token)
    wechat = in_wechat()
    payable = bill.status in (BillStatus.open, BillStatus.partially_paid)
    if wechat and payable and not session.get(OPENID_KEY):
        return _oauth_redirect(token)
    amount_fen, amount_error = None, None
    try:
        amount_fen = _requested_amount(bill, request.args.get("amount")) if payable else None
    except DomainError as exc:
        amount_error = exc.message
    return render_template(
        "pay/page.html",
        bill=bill,
        token=token,
        mode="jsapi" if wechat else "native",
        payable=payable,
        amount_fen=amount_fen,
        amount_error=amount_error,
        min_fen=settings().min_partial_payment_fen,
        status_label=STATUS_LABELS[bill.status],
        company=settings().company_name,
    )


@bp.get("/<token>/oauth")
def oauth_callback(token: str) -> Any:
    bill = _load_bill(token)
    nonce = session.pop(OAUTH_NONCE_KEY, None)
    try:
        got_nonce, tag = _state_serializer().loads(request.args.get("state", ""), max_age=OAUTH_STATE_MAX_AGE)
    except (BadSignature, ValueError):
        got_nonce, tag = None, None
    code = request.args.get("code", "")
    if (
        not code
        or nonce is None
        or not hmac.compare_digest(str(got_nonce), nonce)
        or tag != _token_tag(token)
    ):
        return _oauth_redirect(token)  # a stale or replayed state: start over once more
    try:
        identity = oauth_client().exchange_oauth_code(code)
    except Exception as exc:  # the bot client's typed errors; a used or expired code
        log.info("OAuth code exchange failed: %s", type(exc).__name__)
        return render_template(
            "pay/error.html", title="授权失败", message="微信授权失败，请返回重新打开支付链接。"
        ), 400
    if identity.is_snapshot:
        return render_template(
            "pay/error.html",
            title="请在微信中打开",
            message="当前为朋友圈快照页面，无法支付。请点击页面下方“使用完整服务”后再支付。",
        ), 403
    session[OPENID_KEY] = identity.openid
    with current_db().transaction() as s:
        bind_customer_openid(s, s.get_one(Bill, bill.id), identity.openid)
    return redirect(f"/pay/{token}", code=302)


@bp.post("/<token>/jsapi")
def jsapi(token: str) -> Any:
    bill = _load_bill(token)
    openid = session.get(OPENID_KEY)
    if not openid:
        return jsonify({"error": {"code": "oauth_required", "message": "请在微信中重新打开支付链接"}}), 401
    body = request.get_json(silent=True) or request.form
    try:
        amount = _requested_amount(bill, body.get("amount"))
        opened = _open(bill, Channel.jsapi, amount, openid)
    except DomainError as exc:
        return _json_error(exc)
    assert opened.prepay_id is not None
    params = gateway().jsapi_pay_params(opened.prepay_id)
    return jsonify({"out_trade_no": opened.out_trade_no, "amount_fen": opened.amount_fen, "params": params})


@bp.get("/<token>/status")
def status(token: str) -> Any:
    number = _bill_number(token)
    out_trade_no = request.args.get("attempt")
    # The page must never see a succeeded attempt next to a bill read before that payment committed
    # (支付成功 with the old amount still outstanding). On PostgreSQL (READ COMMITTED) each statement
    # of a transaction reads its own snapshot, so the attempt is read FIRST: a bill read after it
    # includes every payment the attempt already shows (at worst the page sees the new amounts one
    # poll before it sees 支付成功).
    with current_db().transaction() as s:
        attempt_status = None
        if out_trade_no:
            attempt_status = s.execute(
                select(PaymentAttempt.status)
                .join(Bill, Bill.id == PaymentAttempt.bill_id)
                .where(PaymentAttempt.out_trade_no == out_trade_no, Bill.number == number)
            ).scalar_one_or_none()
        bill = s.execute(select(Bill).where(Bill.number == number)).scalar_one_or_none()
        if bill is None:
            raise LinkInvalid()
        view = bill_status_view(bill)
        if out_trade_no:
            view["attempt"] = (
                {"out_trade_no": out_trade_no, "status": str(attempt_status)} if attempt_status else None
            )
    response = jsonify(view)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/<token>/qr.png")
def qr(token: str) -> Any:
    bill = _load_bill(token)
    raw = request.args.get("amount_fen")
    try:
        amount = int(raw) if raw else None
        opened = _open(bill, Channel.native, amount, None)
    except ValueError:
        return render_template("pay/error.html", title="金额不正确", message="金额参数不正确。"), 422
    except DomainError as exc:
        return render_template("pay/error.html", title="无法支付", message=exc.message), exc.http_status
    assert opened.code_url is not None
    response = Response(qr_png(opened.code_url), mimetype="image/png")
    response.headers["Cache-Control"] = "no-store"  # the open attempt may change; the bytes are cached
    return response


def _open(bill: Bill, channel: Channel, amount: int | None, openid: str | None) -> OpenAttempt:
    bill.require_payable(0)  # a paid or void bill: 409 with its status, before any amount check
    return open_attempt(
        current_db(),
        gateway(),
        checkout_policy(),
        bill.id,
        channel=channel,
        amount_fen=amount,
        payer_openid=openid,
    )


@bp.errorhandler(LinkInvalid)
def link_invalid(exc: LinkInvalid) -> Any:
    if exc.expired:
        return render_template(
            "pay/error.html", title="链接已过期", message="这个支付链接已过期，请联系我们重新发送。"
        ), 410
    return render_template(
        "pay/error.html", title="链接无效", message="这个支付链接无效，请联系我们重新发送。"
    ), 404
