"""Orders and refunds: WeChat Pay's side of the state machine, in memory behind one lock.

trade_state: NOTPAY → SUCCESS → REFUND (a refund was requested), NOTPAY → CLOSED (closed or expired).
refund status: PROCESSING → SUCCESS | CLOSED | ABNORMAL.
"""

from __future__ import annotations

import random
import string
import threading
from dataclasses import dataclass, field
from typing import Any

from sandbox.keys import SandboxCredentials

from .errors import ApiError, invalid_request, now_cst, order_not_exist, rfc3339
from .models import REFUND_FINAL, Order, Refund, digits, new_openid, new_transaction_id
from .validation import validate_order, validate_refund

MAX_REFUNDS_PER_ORDER = 50


@dataclass
class Store:
    credentials: SandboxCredentials
    lock: threading.RLock = field(default_factory=threading.RLock)
    orders: dict[str, Order] = field(default_factory=dict)
    refunds: dict[str, Refund] = field(default_factory=dict)

    def reset(self) -> None:
        with self.lock:
            self.orders.clear()
            self.refunds.clear()

    # -- orders ------------------------------------------------------------------------------------
    def create_order(self, trade_type: str, body: dict[str, Any]) -> dict[str, str]:
        fields = validate_order(trade_type, body, self.credentials)
        with self.lock:
            existing = self.orders.get(fields["out_trade_no"])
            if existing is not None:
                self._expire_if_due(existing)
                if existing.trade_state == "CLOSED":
                    raise ApiError(400, "ORDER_CLOSED", "订单已关闭")
                if existing.request != body or existing.trade_type != trade_type:
                    raise ApiError(403, "OUT_TRADE_NO_USED", "商户订单号重复")
                if existing.trade_state != "NOTPAY":
                    raise ApiError(403, "ORDERPAID", "该订单已支付")
                return dict(existing.prepay)
            now = now_cst()
            if trade_type == "JSAPI":
                prepay = {"prepay_id": "wx" + now.strftime("%d%H%M%S") + f"{random.getrandbits(112):028x}"}
            else:
                code = "".join(random.choices(string.ascii_letters + string.digits, k=11))
                prepay = {"code_url": "weixin://wxpay/bizpayurl?pr=" + code}
            self.orders[fields["out_trade_no"]] = Order(
                trade_type=trade_type,
                appid=body["appid"],
                mchid=body["mchid"],
                request=body,
                prepay=prepay,
                created_at=now,
                **fields,
            )
            return dict(prepay)

    def _expire_if_due(self, order: Order) -> None:
        if order.trade_state == "NOTPAY" and order.time_expire and order.time_expire <= now_cst():
            order.trade_state, order.closed_at = "CLOSED", order.time_expire

    def order(self, out_trade_no: str) -> Order:
        with self.lock:
            order = self.orders.get(out_trade_no)
            if order is None:
                raise order_not_exist()
            self._expire_if_due(order)
            return order

    def order_by_transaction_id(self, transaction_id: str) -> Order:
        with self.lock:
            for order in self.orders.values():
                if order.transaction_id == transaction_id:
                    return order
        raise order_not_exist()

    def close_order(self, out_trade_no: str, *, expire: bool = False) -> Order:
        with self.lock:
            order = self.order(out_trade_no)
            if order.trade_state in ("SUCCESS", "REFUND"):
                raise ApiError(400, "ORDERPAID", "订单已支付")
            if order.trade_state == "NOTPAY":
                order.trade_state, order.closed_at = "CLOSED", now_cst()
            return order

    def mark_paid(
        self,
        out_trade_no: str,
        *,
        amount: int | None = None,
        payer_total: int | None = None,
        openid: str | None = None,
        bank_type: str = "OTHERS",
        force: bool = False,
    ) -> Order:
        """The customer pays: NOTPAY → SUCCESS (``force`` also lets a CLOSED order be paid: a race)."""
        with self.lock:
            order = self.order(out_trade_no)
            if order.trade_state != "NOTPAY" and not (force and order.trade_state == "CLOSED"):
                raise ApiError(409, "ORDER_STATE", f"订单状态为{order.trade_state}，不能支付")
            now = now_cst()
            order.trade_state, order.success_time = "SUCCESS", now
            order.transaction_id = new_transaction_id(now)
            order.paid_total = amount if amount is not None else order.total
            order.payer_total = payer_total if payer_total is not None else order.paid_total
            order.payer_openid = openid or order.openid or new_openid()
            order.bank_type = bank_type
            return order

    # -- refunds -----------------------------------------------------------------------------------
    def create_refund(self, body: dict[str, Any]) -> tuple[Refund, bool]:
        """A new refund, or the existing one for the same out_refund_no; the flag says it is new."""
        fields = validate_refund(body)
        with self.lock:
            if fields["transaction_id"]:
                order = self.order_by_transaction_id(fields["transaction_id"])
            else:
                order = self.order(fields["out_trade_no"])
            existing = self.refunds.get(fields["out_refund_no"])
            if existing is not None:
                if existing.order is not order:
                    raise invalid_request("商户退款单号已被其他订单使用")
                return existing, False
            if order.trade_state not in ("SUCCESS", "REFUND"):
                raise ApiError(400, "INVALID_REQUEST", "订单未支付，不能退款")
            paid = order.paid_total or order.total
            if fields["total"] != paid:
                raise invalid_request("订单金额或退款金额与之前请求不一致，请核实后再试")
            mine = [r for r in self.refunds.values() if r.order is order]
            if len(mine) >= MAX_REFUNDS_PER_ORDER:
                raise invalid_request("退款次数超过限制（50次）")
            committed = sum(r.refund for r in mine if r.status != "CLOSED")
            if committed + fields["refund"] > paid:
                raise invalid_request("申请退款金额超过订单可退金额")
            refund = Refund(
                out_refund_no=fields["out_refund_no"],
                refund_id="50" + digits(27),
                order=order,
                refund=fields["refund"],
                reason=fields["reason"],
                notify_url=fields["notify_url"],
                funds_account=fields["funds_account"] or "AVAILABLE",
                create_time=now_cst(),
            )
            self.refunds[refund.out_refund_no] = refund
            order.trade_state = "REFUND"
            return refund, True

    def refund(self, out_refund_no: str) -> Refund:
        with self.lock:
            refund = self.refunds.get(out_refund_no)
            if refund is None:
                raise ApiError(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
            return refund

    def finish_refund(self, out_refund_no: str, status: str) -> Refund | None:
        """PROCESSING → ``status``; None if the refund already has a final status."""
        if status not in REFUND_FINAL:
            raise ValueError(f"refund status must be one of {REFUND_FINAL}")
        with self.lock:
            refund = self.refund(out_refund_no)
            if refund.status != "PROCESSING":
                return None
            refund.status = status
            if status == "SUCCESS":
                refund.success_time = now_cst()
            return refund

    # -- views -------------------------------------------------------------------------------------
    def ledger(self) -> list[dict[str, Any]]:
        """Every paid order with its money, for three-way ledger checks."""
        with self.lock:
            rows = []
            for order in self.orders.values():
                if not order.transaction_id:
                    continue
                refunds = [r for r in self.refunds.values() if r.order is order]
                rows.append(
                    {
                        "out_trade_no": order.out_trade_no,
                        "transaction_id": order.transaction_id,
                        "amount": order.paid_total,
                        "payer_total": order.payer_total,
                        "refunded": sum(r.refund for r in refunds if r.status == "SUCCESS"),
                        "refund_pending": sum(r.refund for r in refunds if r.status == "PROCESSING"),
                        "trade_state": order.trade_state,
                        "success_time": rfc3339(order.success_time or now_cst()),
                    }
                )
            return rows
