"""WeChat's verdict on a refund, from whichever way it arrives (notification, query, trade bill).

:func:`settle_refund` applies it through ``services.apply_refund_result`` (once; a repeated verdict is a
no-op) and, when a refund turns ABNORMAL, records an anomaly and emits ``payment.anomaly`` with what
finance must do next: WeChat could not pay the money back (usually the customer's bank card was
closed or frozen) and will not retry by itself.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from erp_sync.outbox import Topic, emit
from payments import services
from payments.bills import bill_event_data
from payments.errors import RefundNotAllowed
from payments.models import AnomalyKind, PaymentAnomaly, Refund, RefundStatus

WECHAT_STATUS = {
    "SUCCESS": RefundStatus.succeeded,
    "CLOSED": RefundStatus.closed,
    "ABNORMAL": RefundStatus.abnormal,
}
ABNORMAL_NEXT_STEP = (
    "微信退款异常（多为客户银行卡已注销或冻结），微信不会自动重试。请登录微信支付商户平台 → 交易中心 → "
    "退款查询，按退款单号 {out_refund_no} 发起“异常退款处理”（退至客户微信零钱或商户指定账户）；"
    "若无法处理，请线下退款给客户。"
)


def settle_refund(
    session: Session,
    out_refund_no: str,
    *,
    status: RefundStatus,
    refund_id: str | None = None,
    error: str | None = None,
    now: dt.datetime | None = None,
) -> Refund:
    """Apply a final refund status; an ABNORMAL one (the first time) also tells finance what to do."""
    before = session.execute(
        select(Refund.status).where(Refund.out_refund_no == out_refund_no)
    ).scalar_one_or_none()
    if before is None:
        raise RefundNotAllowed("没有找到这笔退款")
    refund = services.apply_refund_result(
        session, out_refund_no, status=status, refund_id=refund_id, error=error, now=now
    )
    if status is RefundStatus.abnormal and before is not RefundStatus.abnormal:
        record_abnormal(session, refund, now)
    return refund


def record_abnormal(session: Session, refund: Refund, now: dt.datetime | None = None) -> PaymentAnomaly:
    """One anomaly per abnormal refund (the caller holds the bill lock and saw the transition)."""
    payment, bill = refund.payment, refund.bill
    next_step = ABNORMAL_NEXT_STEP.format(out_refund_no=refund.out_refund_no)
    detail = {
        "out_refund_no": refund.out_refund_no,
        "refund_id": refund.refund_id,
        "transaction_id": payment.transaction_id,
        "receipt_no": payment.receipt_no,
        "next_step": next_step,
    }
    anomaly = PaymentAnomaly(
        kind=AnomalyKind.refund_abnormal,
        bill_id=bill.id,
        payment_id=payment.id,
        out_trade_no=payment.attempt.out_trade_no if payment.attempt else None,
        # transaction_id stays empty: the (kind, transaction_id) uniqueness is for payments, and one
        # payment may have several abnormal refunds.
        amount_fen=refund.amount_fen,
        detail=detail,
    )
    session.add(anomaly)
    data = bill_event_data(
        bill,
        kind=str(AnomalyKind.refund_abnormal),
        amount_fen=refund.amount_fen,
        detail=detail,
        next_step=next_step,
    )
    emit(session, Topic.payment_anomaly, bill=bill, data=data, now=now)
    return anomaly
