"""Signed, unguessable, expiring links: ``/pay/<token>`` for a bill and ``/receipts/<token>`` for a
payment. Tokens are HMAC-signed with SECRET_KEY (itsdangerous), so they can't be forged or guessed
from a bill number; they expire after ``pay_link_ttl_days`` (pay) or never (receipts)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

_PAY_SALT = "renopay.pay-link"
_RECEIPT_SALT = "renopay.receipt-link"


class LinkInvalid(Exception):
    """The token was tampered with, is malformed, or has expired."""

    def __init__(self, expired: bool = False):
        self.expired = expired
        super().__init__("expired" if expired else "invalid")


class _DaySigner(TimestampSigner):
    """Stamps tokens with the start of the current UTC day, not the second: a bill's link is the same
    string all day (idempotent API answers and repeated notices carry identical links), and a link
    lives between ``pay_ttl_days`` and one day more."""

    def get_timestamp(self) -> int:
        return int(time.time()) // 86_400 * 86_400


@functools.lru_cache(maxsize=16)
def _serializer(secret_key: str, salt: str) -> URLSafeTimedSerializer:
    """Serializers are immutable; building one per link was a measurable share of a bill list."""
    return URLSafeTimedSerializer(secret_key, salt=salt, signer=_DaySigner)


@dataclass(frozen=True)
class Links:
    secret_key: str
    public_base_url: str
    pay_ttl_days: int = 90

    def _serializer(self, salt: str) -> URLSafeTimedSerializer:
        return _serializer(self.secret_key, salt)

    def pay_token(self, bill_number: str) -> str:
        return self._serializer(_PAY_SALT).dumps(bill_number)

    def bill_number_from_pay_token(self, token: str) -> str:
        try:
            value = self._serializer(_PAY_SALT).loads(token, max_age=self.pay_ttl_days * 86400)
        except SignatureExpired as exc:
            raise LinkInvalid(expired=True) from exc
        except BadSignature as exc:
            raise LinkInvalid() from exc
        if not isinstance(value, str):
            raise LinkInvalid()
        return value

    def receipt_token(self, receipt_no: str) -> str:
        return self._serializer(_RECEIPT_SALT).dumps(receipt_no)

    def receipt_no_from_token(self, token: str) -> str:
        try:
            value = self._serializer(_RECEIPT_SALT).loads(token)
        except BadSignature as exc:
            raise LinkInvalid() from exc
        if not isinstance(value, str):
            raise LinkInvalid()
        return value

    def pay_url(self, bill_number: str) -> str:
        return f"{self.public_base_url.rstrip('/')}/pay/{self.pay_token(bill_number)}"

    def receipt_url(self, receipt_no: str) -> str:
        return f"{self.public_base_url.rstrip('/')}/receipts/{self.receipt_token(receipt_no)}"

    def verification_code(self, receipt_no: str) -> str:
        """A short code printed on a receipt; finance can recompute it to check a paper copy."""
        digest = hmac.new(self.secret_key.encode(), f"receipt:{receipt_no}".encode(), hashlib.sha256)
        return digest.hexdigest()[:8].upper()
