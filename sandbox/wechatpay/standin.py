"""``StandIn``: the whole WeChat Pay stand-in as one object, for the HTTP layer and in-process tests."""

from __future__ import annotations

import collections
import gzip
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from sandbox.keys import SandboxCredentials

from .bill import BILL_TYPES, BillInjections, trade_bill
from .crypto import Crypto
from .errors import ApiError, param_error
from .faults import ApiFaults
from .models import REFUND_FINAL, Order, Refund
from .notifier import Notifier
from .state import Store

MODES = ("public_key", "certificate")
REFUND_SUMMARY = {"SUCCESS": "退款成功", "CLOSED": "退款关闭", "ABNORMAL": "退款异常"}


@dataclass
class Settings:
    refund_status: str = "SUCCESS"  # default outcome of a refund; PROCESSING = wait for resolve_refund()
    refund_delay: float = 1.0  # seconds before the default outcome is applied
    bill_url_ttl: float = 30.0  # lifetime of a trade-bill download_url


class StandIn:
    def __init__(
        self, credentials: SandboxCredentials, *, retry_scale: float = 1.0, mode: str = "public_key"
    ):
        self.credentials = credentials
        self.crypto = Crypto(credentials)
        self.set_mode(mode)
        self.store = Store(credentials)
        self.notifier = Notifier(self.crypto, lambda: self.serial, retry_scale=retry_scale)
        self.api_faults = ApiFaults()
        self.bill_injections = BillInjections()
        self.settings = Settings()
        self._lock = threading.Lock()
        self._generation = 0  # bumped by reset(): refund timers of an earlier generation do nothing
        self._refund_outcomes: dict[str, tuple[str, float | None]] = {}
        self._bills: dict[str, tuple[bytes, float]] = {}
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=2000)

    # -- signing mode ------------------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode

    @property
    def serial(self) -> str:
        """The Wechatpay-Serial of our signatures: the public key id, or the platform certificate serial."""
        if self.mode == "public_key":
            return self.credentials.platform_public_key_id
        return self.credentials.platform_cert_serial_no

    def reset(self) -> None:
        """Forget all orders, refunds, faults, injections and logs (credentials and mode stay)."""
        self.store.reset()
        self.notifier.reset()
        self.api_faults.clear()
        self.bill_injections.clear()
        with self._lock:
            self._generation += 1
            self.settings = Settings()
            self._refund_outcomes.clear()
            self._bills.clear()
            self.requests.clear()

    # -- the customer's side -----------------------------------------------------------------------
    def pay(
        self,
        out_trade_no: str,
        *,
        amount: int | None = None,
        payer_total: int | None = None,
        openid: str | None = None,
        bank_type: str = "OTHERS",
        force: bool = False,
        notify: bool = True,
    ) -> dict[str, Any]:
        """The customer pays: the order becomes SUCCESS and TRANSACTION.SUCCESS goes to its notify_url.

        ``amount`` makes WeChat report a different total (a mismatch); ``force`` pays a CLOSED order
        (a close racing a payment); ``notify=False`` skips the notification entirely.
        """
        order = self.store.mark_paid(
            out_trade_no,
            amount=amount,
            payer_total=payer_total,
            openid=openid,
            bank_type=bank_type,
            force=force,
        )
        transaction = order.transaction()
        if notify:
            self.notifier.submit(
                order.notify_url,
                "TRANSACTION.SUCCESS",
                "支付成功",
                "transaction",
                transaction,
                ref=order.out_trade_no,
            )
        return transaction

    def close(self, out_trade_no: str) -> dict[str, Any]:
        return self.store.close_order(out_trade_no).transaction()

    expire = close  # an expired order reads exactly like a closed one

    def signtest(self, url: str | None = None, out_trade_no: str | None = None) -> dict[str, Any]:
        """Send a WECHATPAY/SIGNTEST/ probe to ``url`` (default: the order's notify_url)."""
        order = self.store.order(out_trade_no) if out_trade_no else None
        target = url or (order.notify_url if order else None)
        if not target:
            raise ValueError("signtest needs a url or an out_trade_no")
        resource = order.transaction() if order else {"out_trade_no": "SIGNTEST", "trade_state": "SUCCESS"}
        return _public(
            self.notifier.probe(target, "TRANSACTION.SUCCESS", resource, out_trade_no or "SIGNTEST")
        )

    # -- refunds -----------------------------------------------------------------------------------
    def create_refund(self, body: dict[str, Any]) -> Refund:
        refund, created = self.store.create_refund(body)
        if created:  # not a retry of an existing out_refund_no
            with self._lock:
                delay = self._refund_outcomes.get(refund.out_refund_no, (None, None))[1]
                delay = self.settings.refund_delay if delay is None else delay
                generation = self._generation
            threading.Thread(
                target=self._auto_finish, args=(refund.out_refund_no, delay, generation), daemon=True
            ).start()
        return refund

    def _auto_finish(self, out_refund_no: str, delay: float, generation: int) -> None:
        time.sleep(delay)
        with self._lock:
            if generation != self._generation:
                return
            status = self._refund_outcomes.get(out_refund_no, (self.settings.refund_status, None))[0]
        if status in REFUND_FINAL:
            self.resolve_refund(out_refund_no, status, missing_ok=True)

    def set_refund_outcome(
        self, status: str, out_refund_no: str | None = None, delay: float | None = None
    ) -> None:
        """Outcome of one refund (by out_refund_no, even before it exists) or, without it, the default."""
        if status not in (*REFUND_FINAL, "PROCESSING"):
            raise ValueError("status must be SUCCESS, CLOSED, ABNORMAL or PROCESSING (hold)")
        with self._lock:
            if out_refund_no is None:
                self.settings.refund_status = status
                if delay is not None:
                    self.settings.refund_delay = delay
            else:
                self._refund_outcomes[out_refund_no] = (status, delay)

    def resolve_refund(
        self, out_refund_no: str, status: str, *, missing_ok: bool = False
    ) -> dict[str, Any] | None:
        """Give a PROCESSING refund its final status now and send the REFUND.* notification."""
        try:
            refund = self.store.finish_refund(out_refund_no, status)
        except ApiError:
            if missing_ok:
                return None
            raise
        if refund is None:
            return None
        if refund.notify_url:
            self.notifier.submit(
                refund.notify_url,
                f"REFUND.{status}",
                REFUND_SUMMARY[status],
                "refund",
                refund.notification(),
                ref=out_refund_no,
            )
        return refund.view()

    # -- trade bills -------------------------------------------------------------------------------
    def trade_bill(self, bill_date: str, bill_type: str = "ALL") -> str | None:
        return trade_bill(self.store, self.bill_injections, bill_date, bill_type)

    def prepare_bill(self, bill_date: str | None, bill_type: str, tar_type: str | None) -> tuple[str, str]:
        """Build a bill for download: returns (SHA1 of the uncompressed CSV, download token)."""
        if not bill_date:
            raise param_error("bill_date必填", "bill_date")
        if bill_type not in BILL_TYPES or tar_type not in (None, "GZIP"):
            raise param_error("bill_type或tar_type取值错误", "bill_type")
        try:
            text = self.trade_bill(bill_date, bill_type)
        except ValueError:
            raise param_error("bill_date格式须为YYYY-MM-DD", "bill_date") from None
        if text is None:
            raise ApiError(400, "NO_STATEMENT_EXIST", "账单文件不存在")
        raw = text.encode()
        payload = gzip.compress(raw, mtime=0) if tar_type == "GZIP" else raw
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._bills[token] = (payload, time.monotonic() + self.settings.bill_url_ttl)
        return hashlib.sha1(raw).hexdigest(), token  # noqa: S324 - WeChat's bill hash is SHA1

    def bill_file(self, token: str) -> bytes:
        with self._lock:
            payload, expires = self._bills.get(token, (b"", 0.0))
        if time.monotonic() > expires:
            raise ApiError(400, "INVALID_REQUEST", "下载链接已过期或不存在")
        return payload

    # -- views -------------------------------------------------------------------------------------
    def orders(self) -> list[dict[str, Any]]:
        with self.store.lock:
            return [_order_view(o) for o in self.store.orders.values()]

    def order(self, out_trade_no: str) -> dict[str, Any]:
        return _order_view(self.store.order(out_trade_no))

    def refunds(self) -> list[dict[str, Any]]:
        with self.store.lock:
            return [
                {**r.view(), "notify_url": r.notify_url, "reason": r.reason}
                for r in self.store.refunds.values()
            ]

    def ledger(self) -> list[dict[str, Any]]:
        return self.store.ledger()

    def notifications(self) -> dict[str, Any]:
        return self.notifier.snapshot()

    def deliveries(self) -> list[dict[str, Any]]:
        deliveries: list[dict[str, Any]] = self.notifier.snapshot()["deliveries"]
        return deliveries

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.requests)

    def log_request(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)


def _order_view(order: Order) -> dict[str, Any]:
    return {
        **order.transaction(),
        "total": order.total,
        "description": order.description,
        "notify_url": order.notify_url,
        "openid": order.openid,
        **order.prepay,
    }


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "body"}
