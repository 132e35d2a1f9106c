"""The receipt page ``GET /receipts/<token>``: one 收据 per payment, printable on A5, with the amount in
figures and in Chinese capitals, a verification code (HMAC of the receipt number) and a QR that opens
the page; refunds are shown against it. An invalid token is a Chinese 404 page, here and only here.

``init_app`` also hands bot/ its notice directory (staff and customer lookups), so bot never imports
payments.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, current_app, render_template
from sqlalchemy import select
from sqlalchemy.orm import Session

from db import CHINA_TZ, current_db
from payments.links import LinkInvalid, Links
from payments.models import Payment, PaymentMethod, Refund, RefundKind, RefundStatus
from payments.money import chinese_capital, format_fen
from payments.notice_directory import StaffDirectory
from payments.qr import qr_png

bp = Blueprint("receipts", __name__, url_prefix="/receipts")
DIRECTORY_KEY = "renopay.notices.directory"  # read by bot/notices.py

METHOD_LABELS = {
    PaymentMethod.wechat: "微信支付",
    PaymentMethod.transfer: "银行转账",
    PaymentMethod.cash: "现金",
}
REFUND_LABELS = {
    RefundStatus.pending: "退款处理中",
    RefundStatus.processing: "退款处理中",
    RefundStatus.succeeded: "已退款",
    RefundStatus.closed: "退款关闭",
    RefundStatus.abnormal: "退款异常",
    RefundStatus.failed: "退款失败",
}


@dataclass(frozen=True)
class RefundLine:
    amount: str
    status: str
    when: str
    reason: str
    excess: bool


@dataclass(frozen=True)
class ReceiptView:
    receipt_no: str
    payer: str
    bill_number: str
    bill_title: str
    contract_no: str
    stage: str
    amount: str
    amount_capital: str
    applied: str
    excess: str | None
    paid_at: str
    method: str
    transaction_id: str | None
    note: str | None
    company_name: str
    seal_text: str
    verification_code: str
    url: str
    qr_data_uri: str
    refunds: list[RefundLine] = field(default_factory=list)
    refunded: str | None = None
    net: str | None = None


def _china(moment: dt.datetime) -> str:
    return moment.astimezone(CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S")


def _refund_line(refund: Refund) -> RefundLine:
    return RefundLine(
        amount=format_fen(refund.amount_fen),
        status=REFUND_LABELS[refund.status],
        when=_china(refund.finished_at or refund.created_at),
        reason=refund.reason,
        excess=refund.kind is RefundKind.excess,
    )


def receipt_view(session: Session, receipt_no: str, links: Links, settings: Any) -> ReceiptView | None:
    payment = session.execute(select(Payment).where(Payment.receipt_no == receipt_no)).scalar_one_or_none()
    if payment is None:
        return None
    bill = payment.bill
    url = links.receipt_url(payment.receipt_no)
    refunded = sum(r.amount_fen for r in payment.refunds if r.status is RefundStatus.succeeded)
    return ReceiptView(
        receipt_no=payment.receipt_no,
        payer=bill.customer.name,
        bill_number=bill.number,
        bill_title=bill.title,
        contract_no=bill.contract_no or "—",
        stage=bill.stage,
        amount=format_fen(payment.amount_fen),
        amount_capital=chinese_capital(payment.amount_fen),
        applied=format_fen(payment.applied_fen),
        excess=format_fen(payment.excess_fen) if payment.excess_fen else None,
        paid_at=_china(payment.paid_at),
        method=METHOD_LABELS[payment.method],
        transaction_id=payment.transaction_id,
        note=payment.note,
        company_name=settings.company_name,
        seal_text=settings.company_seal_text,
        verification_code=links.verification_code(payment.receipt_no),
        url=url,
        qr_data_uri="data:image/png;base64," + base64.b64encode(qr_png(url)).decode("ascii"),
        refunds=[_refund_line(r) for r in payment.refunds],
        refunded=format_fen(refunded) if refunded else None,
        net=format_fen(payment.amount_fen - refunded) if refunded else None,
    )


@bp.get("/<token>")
def show(token: str) -> Any:
    links: Links = current_app.extensions["renopay.links"]
    receipt_no = links.receipt_no_from_token(token)  # LinkInvalid → 404 below
    with current_db().transaction() as s:
        view = receipt_view(s, receipt_no, links, current_app.extensions["renopay.settings"])
    if view is None:
        raise LinkInvalid()
    response = current_app.make_response(render_template("receipts/receipt.html", r=view))
    response.headers["Cache-Control"] = "private, no-store"  # refunds may be added later
    response.headers["X-Robots-Tag"] = "noindex"
    return response


@bp.errorhandler(LinkInvalid)
def invalid(exc: LinkInvalid) -> Any:
    return render_template("receipts/missing.html"), 404


def init_app(app: Flask) -> None:
    """The receipt page, and bot/'s notice directory (staff openids, finance roster, 48-hour window)."""
    app.register_blueprint(bp)
    app.extensions[DIRECTORY_KEY] = StaffDirectory(app.extensions["renopay.db"])
