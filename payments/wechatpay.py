"""The WeChat Pay APIv3 gateway — the only module that imports wechatpayv3.

The SDK returns ``(status, text)`` tuples and raises bare exceptions; this module turns them into typed
results (dataclasses) and a small error hierarchy: :class:`RetryableError` (try again later with the
same parameters) and :class:`PermanentError` (don't). Every call has a timeout. The payment and refund
``notify_url`` are always passed explicitly (the SDK would send the payment one with refunds).
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3.utils import aes_decrypt, build_authorization, load_certificate, rsa_verify

from db import CHINA_TZ

log = logging.getLogger("renopay.wechatpay")

DEFAULT_TIMEOUT = (5.0, 10.0)  # connect, read
MAX_CALLBACK_AGE = 300  # seconds; wechatpayv3 does not check the timestamp at all
CERT_REFRESH_INTERVAL = 60.0
SIGNTEST_PREFIX = "WECHATPAY/SIGNTEST/"
RETRYABLE_CODES = frozenset(
    {"SYSTEM_ERROR", "SYSTEMERROR", "BANKERROR", "FREQUENCY_LIMITED", "NOT_ENOUGH", "RESOURCE_NOT_EXISTS"}
)
NOT_FOUND_CODES = frozenset({"ORDER_NOT_EXIST", "ORDERNOTEXIST"})


# ------------------------------------------------------------------------------------------- errors


class WeChatPayError(Exception):
    def __init__(self, message: str, *, code: str = "", http_status: int | None = None) -> None:
        super().__init__(f"{code or 'ERROR'}: {message}" if code else message)
        self.code, self.http_status, self.detail = code, http_status, message


class RetryableError(WeChatPayError):
    """Network failure, timeout, 5xx, FREQUENCY_LIMITED, refund NOT_ENOUGH / RESOURCE_NOT_EXISTS."""


class PermanentError(WeChatPayError):
    """PARAM_ERROR, INVALID_REQUEST, SIGN_ERROR, NO_AUTH, OUT_TRADE_NO_USED, ORDER_CLOSED, …"""


class OrderNotFound(PermanentError):
    """ORDER_NOT_EXIST / ORDERNOTEXIST: WeChat has no such order (yet)."""


class OrderAlreadyPaid(PermanentError):
    """ORDERPAID on close: the customer paid while we were closing — query it and take the money."""


class CallbackRejected(Exception):
    """A callback that must be answered 401: bad signature, SIGNTEST probe, stale timestamp."""


def classify(status: int, body: str | bytes) -> WeChatPayError:
    """Turn a non-2xx answer into our error hierarchy."""
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {}
    code = str(data.get("code", "")) if isinstance(data, dict) else ""
    message = str(data.get("message", "")) if isinstance(data, dict) else ""
    if code in NOT_FOUND_CODES:
        return OrderNotFound(message, code=code, http_status=status)
    if code == "ORDERPAID":
        return OrderAlreadyPaid(message, code=code, http_status=status)
    if code in RETRYABLE_CODES or status >= 500 or status == 429:
        return RetryableError(message or f"HTTP {status}", code=code, http_status=status)
    return PermanentError(message or f"HTTP {status}", code=code, http_status=status)


# ------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class Transaction:
    out_trade_no: str
    trade_state: str  # SUCCESS | REFUND | NOTPAY | CLOSED | …
    appid: str
    mchid: str
    transaction_id: str | None = None
    amount_fen: int | None = None
    payer_total_fen: int | None = None
    payer_openid: str | None = None
    trade_type: str | None = None
    success_time: dt.datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def paid(self) -> bool:
        return self.trade_state in ("SUCCESS", "REFUND") and self.transaction_id is not None


@dataclass(frozen=True)
class RefundResult:
    out_refund_no: str
    status: str  # PROCESSING | SUCCESS | CLOSED | ABNORMAL
    refund_id: str | None = None
    amount_fen: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class TradeBill:
    hash_type: str
    hash_value: str
    download_url: str


@dataclass(frozen=True)
class Callback:
    """A verified, decrypted notification."""

    event_id: str
    event_type: str
    resource: Mapping[str, Any]
    create_time: str = ""


@dataclass(frozen=True)
class GatewayConfig:
    mchid: str
    appid: str
    apiv3_key: str
    private_key_pem: str
    cert_serial_no: str
    api_base: str
    notify_url: str
    refund_notify_url: str
    public_key_pem: str | None = None
    public_key_id: str | None = None
    cert_dir: str | None = None
    timeout: tuple[float, float] = DEFAULT_TIMEOUT


def parse_time(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text) if text else None


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(CHINA_TZ).isoformat(timespec="seconds")


def transaction_from(data: Mapping[str, Any]) -> Transaction:
    amount = data.get("amount") or {}
    payer = data.get("payer") or {}
    return Transaction(
        out_trade_no=str(data.get("out_trade_no", "")),
        trade_state=str(data.get("trade_state", "")),
        appid=str(data.get("appid", "")),
        mchid=str(data.get("mchid", "")),
        transaction_id=data.get("transaction_id"),
        amount_fen=amount.get("total"),
        payer_total_fen=amount.get("payer_total"),
        payer_openid=payer.get("openid"),
        trade_type=data.get("trade_type"),
        success_time=parse_time(data.get("success_time")),
        raw=dict(data),
    )


def refund_from(data: Mapping[str, Any]) -> RefundResult:
    amount = data.get("amount") or {}
    return RefundResult(
        out_refund_no=str(data.get("out_refund_no", "")),
        status=str(data.get("status") or data.get("refund_status") or ""),
        refund_id=data.get("refund_id"),
        amount_fen=amount.get("refund"),
        raw=dict(data),
    )


# ------------------------------------------------------------------------------------------ gateway


class WeChatPayGateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.mchid, self.appid = config.mchid, config.appid
        self._wxpay = self._build(config)
        self._last_refresh = 0.0

    @staticmethod
    def _build(config: GatewayConfig) -> WeChatPay:
        keys: dict[str, Any] = {}
        if config.public_key_id:
            keys = {"public_key": config.public_key_pem, "public_key_id": config.public_key_id}
        elif config.cert_dir:
            # Certificate mode downloads /v3/certificates from the SDK's hard-coded host at construction
            # unless cert_dir already holds a valid certificate: put one there first, from OUR base URL.
            ensure_platform_certificates(config)
        try:
            wxpay = WeChatPay(
                wechatpay_type=WeChatPayType.NATIVE,
                mchid=config.mchid,
                private_key=config.private_key_pem,
                cert_serial_no=config.cert_serial_no,
                appid=config.appid,
                apiv3_key=config.apiv3_key,
                notify_url=config.notify_url,
                cert_dir=config.cert_dir,
                timeout=config.timeout,
                **keys,
            )
        except requests.RequestException as exc:
            raise RetryableError(f"cannot fetch platform certificates: {type(exc).__name__}") from exc
        except Exception as exc:  # the SDK raises bare Exception when no certificate could be loaded
            raise PermanentError(f"cannot initialise wechatpayv3: {exc}") from exc
        # HACK: wechatpayv3 has no base-URL parameter; ``_core._gate_way`` is its only hook (the backup
        # domain api2.mch.weixin.qq.com, a proxy, or the sandbox stand-in).
        wxpay._core._gate_way = config.api_base.rstrip("/")
        return wxpay

    # -- plumbing ----------------------------------------------------------------------------------
    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        try:
            status, body = fn(*args, **kwargs)
        except requests.Timeout as exc:
            raise RetryableError(f"{what}: timeout", code="TIMEOUT") from exc
        except requests.RequestException as exc:
            raise RetryableError(f"{what}: {type(exc).__name__}", code="NETWORK") from exc
        except Exception as exc:  # the SDK raises bare Exception when a 2xx answer's signature fails
            raise RetryableError(f"{what}: {exc}", code="UNVERIFIED_RESPONSE") from exc
        if not 200 <= status < 300:
            error = classify(status, body)
            log.info("wechatpay %s failed: %s (HTTP %s)", what, error.code, status)
            raise error
        return status, body

    def _json(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        _, body = self._call(what, fn, *args, **kwargs)
        data = json.loads(body) if body else {}
        if not isinstance(data, dict):
            raise RetryableError(f"{what}: unexpected answer", code="BAD_ANSWER")
        return data

    def _order(
        self,
        kind: WeChatPayType,
        out_trade_no: str,
        amount_fen: int,
        description: str,
        expires_at: dt.datetime,
        payer_openid: str | None = None,
    ) -> dict[str, Any]:
        return self._json(
            f"create {kind.name} order",
            self._wxpay.pay,
            description=description[:127],
            out_trade_no=out_trade_no,
            amount={"total": amount_fen, "currency": "CNY"},
            payer={"openid": payer_openid} if payer_openid else None,
            time_expire=rfc3339(expires_at),
            notify_url=self.config.notify_url,
            pay_type=kind,
        )

    # -- orders ------------------------------------------------------------------------------------
    def create_jsapi_order(
        self,
        *,
        out_trade_no: str,
        amount_fen: int,
        description: str,
        payer_openid: str,
        expires_at: dt.datetime,
    ) -> str:
        """Returns the prepay_id. Identical parameters again → the same prepay_id."""
        data = self._order(
            WeChatPayType.JSAPI, out_trade_no, amount_fen, description, expires_at, payer_openid
        )
        return str(data["prepay_id"])

    def create_native_order(
        self, *, out_trade_no: str, amount_fen: int, description: str, expires_at: dt.datetime
    ) -> str:
        """Returns the code_url (``weixin://wxpay/bizpayurl?pr=…``)."""
        data = self._order(WeChatPayType.NATIVE, out_trade_no, amount_fen, description, expires_at)
        return str(data["code_url"])

    def query_by_out_trade_no(self, out_trade_no: str) -> Transaction:
        return transaction_from(self._json("query", self._wxpay.query, out_trade_no=out_trade_no))

    def query_by_transaction_id(self, transaction_id: str) -> Transaction:
        return transaction_from(self._json("query", self._wxpay.query, transaction_id=transaction_id))

    def close_order(self, out_trade_no: str) -> None:
        """Close at WeChat. Raises OrderAlreadyPaid when the customer paid first."""
        self._call("close", self._wxpay.close, out_trade_no=out_trade_no)

    # -- refunds -----------------------------------------------------------------------------------
    def create_refund(
        self, *, out_refund_no: str, transaction_id: str, refund_fen: int, total_fen: int, reason: str
    ) -> RefundResult:
        data = self._json(
            "refund",
            self._wxpay.refund,
            out_refund_no=out_refund_no,
            amount={"refund": refund_fen, "total": total_fen, "currency": "CNY"},
            transaction_id=transaction_id,
            reason=reason[:80] or None,
            notify_url=self.config.refund_notify_url,
        )
        return refund_from(data)

    def query_refund(self, out_refund_no: str) -> RefundResult:
        return refund_from(self._json("query refund", self._wxpay.query_refund, out_refund_no=out_refund_no))

    # -- bills -------------------------------------------------------------------------------------
    def trade_bill(self, bill_date: dt.date, bill_type: str = "ALL") -> TradeBill:
        data = self._json(
            "trade bill",
            self._wxpay.trade_bill,
            bill_date=bill_date.isoformat(),
            bill_type=bill_type,
            tar_type="GZIP",
        )
        return TradeBill(str(data["hash_type"]), str(data["hash_value"]), str(data["download_url"]))

    def download_bill(self, bill: TradeBill) -> str:
        """The uncompressed CSV text, after checking its SHA1 (the SDK does not)."""
        _, body = self._call("download bill", self._wxpay.download_bill, bill.download_url)
        payload = body if isinstance(body, bytes) else str(body).encode()
        raw = gzip.decompress(payload) if payload[:2] == b"\x1f\x8b" else payload
        digest = hashlib.sha1(raw).hexdigest()  # noqa: S324 - WeChat's bill hash is SHA1
        if bill.hash_type.upper() != "SHA1" or digest.lower() != bill.hash_value.lower():
            raise RetryableError("trade bill hash mismatch", code="HASH_MISMATCH")
        return raw.decode("utf-8")

    # -- the pay page ------------------------------------------------------------------------------
    def jsapi_pay_params(self, prepay_id: str) -> dict[str, str]:
        """Parameters for ``WeixinJSBridge.invoke('getBrandWCPayRequest', …)``."""
        timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
        package = f"prepay_id={prepay_id}"
        pay_sign = self._wxpay.sign([self.appid, timestamp, nonce, package])
        return {
            "appId": self.appid,
            "timeStamp": timestamp,
            "nonceStr": nonce,
            "package": package,
            "signType": "RSA",
            "paySign": str(pay_sign),
        }

    # -- callbacks ---------------------------------------------------------------------------------
    def _check_serial(self, serial: str) -> None:
        """Keep forged serials away from the SDK: for a serial it doesn't know, the SDK clears its
        certificate cache and downloads certificates again — on every forged callback."""
        if self.config.public_key_id:
            if serial != self.config.public_key_id:
                raise CallbackRejected("unknown serial")
            return
        if not _is_hex(serial):
            raise CallbackRejected("odd serial")
        known = {c.serial_number for c in self._wxpay._core._certificates}
        if int(serial, 16) not in known:
            if time.monotonic() - self._last_refresh < CERT_REFRESH_INTERVAL:
                raise CallbackRejected("unknown serial")
            self._last_refresh = time.monotonic()  # a rotation: let the SDK refresh, once a minute

    def verify_and_decrypt(
        self, headers: Mapping[str, str], raw_body: bytes | str, *, now: float | None = None
    ) -> Callback:
        """Verify a notification (signature, age, SIGNTEST) and decrypt its resource.

        Raises :class:`CallbackRejected` for everything that must be answered 401.
        """
        text = raw_body.decode("utf-8") if isinstance(raw_body, bytes) else raw_body
        wanted = (
            "Wechatpay-Signature",
            "Wechatpay-Timestamp",
            "Wechatpay-Nonce",
            "Wechatpay-Serial",
            "Wechatpay-Signature-Type",
        )
        lower = {k.lower(): v for k, v in headers.items()}
        picked = {name: lower.get(name.lower(), "") for name in wanted}
        if picked["Wechatpay-Signature"].startswith(SIGNTEST_PREFIX):
            raise CallbackRejected("signature probe")
        try:
            age = abs(int(time.time() if now is None else now) - int(picked["Wechatpay-Timestamp"]))
        except ValueError:
            raise CallbackRejected("bad timestamp") from None
        if age >= MAX_CALLBACK_AGE:
            raise CallbackRejected("stale timestamp")
        self._check_serial(picked["Wechatpay-Serial"])
        try:
            result = self._wxpay.callback(picked, text)
        except Exception as exc:  # odd serials / missing headers / bad base64 / wrong APIv3 key
            raise CallbackRejected(f"unverifiable ({type(exc).__name__})") from exc
        if not result or not isinstance(result.get("resource"), dict):
            raise CallbackRejected("bad signature")
        return Callback(
            str(result.get("id", "")),
            str(result.get("event_type", "")),
            result["resource"],
            str(result.get("create_time", "")),
        )


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdefABCDEF" for c in text)


def _has_valid_certificate(directory: Path) -> bool:
    now = dt.datetime.now(dt.UTC)
    for pem in directory.glob("*.pem"):
        cert = load_certificate(pem.read_text())
        if cert is not None and cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return True
    return False


def ensure_platform_certificates(config: GatewayConfig) -> None:
    """Certificate mode: download the platform certificates into ``cert_dir`` unless a valid one is there.

    The response is verified with the certificate it carries (as WeChat documents); the merchant's
    trust comes from the APIv3 key, which is the only way to decrypt it.
    """
    directory = Path(str(config.cert_dir))
    directory.mkdir(parents=True, exist_ok=True)
    if _has_valid_certificate(directory):
        return
    path = "/v3/certificates"
    auth = build_authorization(
        path, "GET", config.mchid, config.cert_serial_no, load_private_key_pem(config.private_key_pem)
    )
    try:
        answer = requests.get(
            config.api_base.rstrip("/") + path,
            timeout=config.timeout,
            headers={"Authorization": auth, "Accept": "application/json"},
        )
    except requests.RequestException as exc:
        raise RetryableError(f"cannot fetch platform certificates: {type(exc).__name__}") from exc
    if answer.status_code != 200:
        raise classify(answer.status_code, answer.text)
    for item in answer.json().get("data", []):
        enc = item["encrypt_certificate"]
        pem = aes_decrypt(
            nonce=enc["nonce"],
            ciphertext=enc["ciphertext"],
            associated_data=enc["associated_data"],
            apiv3_key=config.apiv3_key,
        )
        cert = load_certificate(pem)
        headers = answer.headers
        if cert is None or not rsa_verify(
            headers.get("Wechatpay-Timestamp"),
            headers.get("Wechatpay-Nonce"),
            answer.text,
            headers.get("Wechatpay-Signature"),
            cert.public_key(),
        ):
            raise PermanentError("platform certificate answer does not verify", code="SIGN_ERROR")
        (directory / f"{item['serial_no']}.pem").write_text(pem)


def load_private_key_pem(pem: str) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key(pem.encode(), password=None)


def config_from_settings(settings: Any) -> GatewayConfig:
    """Build the gateway configuration from :class:`config.Settings`."""
    base = settings.public_base_url.rstrip("/")
    public_key_pem = None
    default_dir = str(Path(settings.instance_path) / "wechatpay-certs")
    if settings.wechatpay_public_key_id:
        public_key_pem = Path(settings.wechatpay_public_key_file).read_text()
    return GatewayConfig(
        mchid=settings.wechatpay_mch_id,
        appid=settings.wechat_app_id,
        apiv3_key=settings.wechatpay_apiv3_key,
        private_key_pem=Path(settings.wechatpay_private_key_file).read_text(),
        cert_serial_no=settings.wechatpay_cert_serial_no,
        api_base=settings.wechatpay_api_base,
        notify_url=f"{base}/payments/wechatpay/notify",
        refund_notify_url=f"{base}/payments/wechatpay/refund-notify",
        public_key_pem=public_key_pem,
        public_key_id=settings.wechatpay_public_key_id or None,
        cert_dir=settings.wechatpay_cert_dir or (None if settings.wechatpay_public_key_id else default_dir),
    )
