"""Orders and refunds as WeChat Pay keeps them, and how its APIs and notifications show them."""

from __future__ import annotations

import datetime as dt
import random
import string
from dataclasses import dataclass
from typing import Any

from .errors import rfc3339

STATE_DESC = {"NOTPAY": "未支付", "SUCCESS": "支付成功", "REFUND": "转入退款", "CLOSED": "已关闭"}
REFUND_FINAL = ("SUCCESS", "CLOSED", "ABNORMAL")


def digits(n: int) -> str:
    return "".join(random.choices(string.digits, k=n))


def new_transaction_id(moment: dt.datetime) -> str:
    return "4200" + "00" + digits(4) + moment.strftime("%Y%m%d") + digits(10)  # 28 digits


def new_openid() -> str:
    return "o" + "".join(random.choices(string.ascii_letters + string.digits + "-_", k=27))


@dataclass
class Order:
    out_trade_no: str
    trade_type: str  # JSAPI | NATIVE
    appid: str
    mchid: str
    description: str
    notify_url: str
    total: int
    attach: str | None
    time_expire: dt.datetime | None
    openid: str | None
    request: dict[str, Any]  # the request body, for the "identical parameters" idempotency rule
    prepay: dict[str, str]  # {"prepay_id": …} or {"code_url": …}
    created_at: dt.datetime
    trade_state: str = "NOTPAY"
    transaction_id: str | None = None
    success_time: dt.datetime | None = None
    paid_total: int | None = None  # what WeChat says was paid (differs from total to simulate a mismatch)
    payer_total: int | None = None
    payer_openid: str | None = None
    bank_type: str | None = None
    closed_at: dt.datetime | None = None

    def transaction(self) -> dict[str, Any]:
        """The transaction as the query API and the TRANSACTION.SUCCESS notification show it."""
        body: dict[str, Any] = {
            "appid": self.appid,
            "mchid": self.mchid,
            "out_trade_no": self.out_trade_no,
            "trade_type": self.trade_type,
            "trade_state": self.trade_state,
            "trade_state_desc": STATE_DESC[self.trade_state],
            "attach": self.attach or "",
        }
        if self.transaction_id:
            body.update(
                {
                    "transaction_id": self.transaction_id,
                    "bank_type": self.bank_type,
                    "success_time": rfc3339(self.success_time) if self.success_time else None,
                    "payer": {"openid": self.payer_openid},
                    "amount": {
                        "total": self.paid_total,
                        "payer_total": self.payer_total,
                        "currency": "CNY",
                        "payer_currency": "CNY",
                    },
                }
            )
        else:
            body.update(
                {"payer": {}, "amount": {"total": self.total, "currency": "CNY", "payer_currency": "CNY"}}
            )
        return {k: v for k, v in body.items() if v is not None}


@dataclass
class Refund:
    out_refund_no: str
    refund_id: str
    order: Order
    refund: int
    reason: str | None
    notify_url: str | None
    funds_account: str
    create_time: dt.datetime
    status: str = "PROCESSING"
    success_time: dt.datetime | None = None

    def view(self) -> dict[str, Any]:
        """The refund as the refund and refund-query APIs answer it."""
        order = self.order
        paid = order.paid_total or order.total
        payer_refund = min(self.refund, order.payer_total or paid)
        view: dict[str, Any] = {
            "refund_id": self.refund_id,
            "out_refund_no": self.out_refund_no,
            "transaction_id": order.transaction_id,
            "out_trade_no": order.out_trade_no,
            "channel": "ORIGINAL",
            "user_received_account": "支付用户零钱",
            "success_time": rfc3339(self.success_time) if self.success_time else None,
            "create_time": rfc3339(self.create_time),
            "status": self.status,
            "funds_account": self.funds_account,
            "amount": {
                "total": paid,
                "refund": self.refund,
                "payer_total": order.payer_total or paid,
                "payer_refund": payer_refund,
                "settlement_refund": self.refund,
                "settlement_total": paid,
                "discount_refund": 0,
                "currency": "CNY",
                "refund_fee": 0,
                "from": [],
            },
            "promotion_detail": [],
        }
        return {k: v for k, v in view.items() if v is not None}  # WeChat omits absent fields

    def notification(self) -> dict[str, Any]:
        """The decrypted resource of a REFUND.* notification (``refund_status``, not ``status``)."""
        view = self.view()
        amount = view["amount"]
        resource = {
            k: view[k]
            for k in ("transaction_id", "out_trade_no", "refund_id", "out_refund_no", "user_received_account")
        }
        resource.update(
            {
                "mchid": self.order.mchid,
                "refund_status": self.status,
                "amount": {k: amount[k] for k in ("total", "refund", "payer_total", "payer_refund")},
            }
        )
        if self.success_time:
            resource["success_time"] = view["success_time"]
        return resource
