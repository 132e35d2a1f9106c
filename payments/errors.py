"""Domain errors. Each carries a Simplified-Chinese ``message`` fit to show a customer or staff member,
and a stable ``code`` for APIs and logs. Channels (chat, HTTP) map them to replies in one place."""

from __future__ import annotations


class DomainError(Exception):
    code = "domain_error"
    http_status = 409
    default_message = "操作无法完成"

    def __init__(self, message: str | None = None, **context: object):
        self.message = message or self.default_message
        self.context = context
        super().__init__(self.message)


class InvalidAmount(DomainError):
    code = "invalid_amount"
    http_status = 422
    default_message = "金额不正确"


class InvalidInput(DomainError):
    code = "invalid_input"
    http_status = 422
    default_message = "输入不正确"


class NotFound(DomainError):
    code = "not_found"
    http_status = 404
    default_message = "没有找到"


class BillNotFound(NotFound):
    code = "bill_not_found"
    default_message = "没有找到这张账单，请核对账单编号"


class IllegalTransition(DomainError):
    code = "illegal_transition"
    default_message = "当前状态下不能进行这个操作"


class BillNotPayable(IllegalTransition):
    code = "bill_not_payable"
    default_message = "这张账单当前不能支付"


class AmountExceedsOutstanding(DomainError):
    code = "amount_exceeds_outstanding"
    http_status = 422
    default_message = "金额超过了待付金额"


class AmountBelowMinimum(DomainError):
    code = "amount_below_minimum"
    http_status = 422
    default_message = "金额低于最低支付金额"


class RefundNotAllowed(DomainError):
    code = "refund_not_allowed"
    http_status = 422
    default_message = "这笔退款无法办理"


class IdempotencyConflict(DomainError):
    code = "idempotency_conflict"
    http_status = 409
    default_message = "同一编号的请求内容不一致"
