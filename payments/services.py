"""The payments use cases in one import: ``from payments import services``.

One function per use case, each taking the caller's session and plain values; the caller owns the
transaction (commit or roll back), so nothing is ever half-written.
"""

from payments.applying import Outcome, PaymentResult, WeChatPaymentFacts, payment_view
from payments.bills import (
    cancel_draft,
    find_or_create_customer,
    get_bill_by_number,
    issue_bill,
    lock_bill,
    open_bill,
    remind_bill,
    void_bill,
)
from payments.collect import (
    AttemptStart,
    apply_wechat_payment,
    fail_attempt,
    record_offline_payment,
    record_order_created,
    start_attempt,
)
from payments.refunds import (
    apply_refund_result,
    mark_refund_processing,
    payment_refundable_fen,
    queue_refund,
    refund_view,
    request_refund,
)

__all__ = [
    "AttemptStart",
    "Outcome",
    "PaymentResult",
    "WeChatPaymentFacts",
    "apply_refund_result",
    "apply_wechat_payment",
    "cancel_draft",
    "fail_attempt",
    "find_or_create_customer",
    "get_bill_by_number",
    "issue_bill",
    "lock_bill",
    "mark_refund_processing",
    "open_bill",
    "payment_refundable_fen",
    "payment_view",
    "queue_refund",
    "record_offline_payment",
    "record_order_created",
    "refund_view",
    "remind_bill",
    "request_refund",
    "start_attempt",
    "void_bill",
]
