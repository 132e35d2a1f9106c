"""The ERP webhook gateway (the only user of ``requests`` for the ERP): signed, idempotent pushes.

Contract (ARCHITECTURE Part A): ``POST ERP_WEBHOOK_URL`` with the event body as JSON and headers
``RenoPay-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`` and
``Idempotency-Key: <event id>``. Any 2xx is delivered; anything else, or a timeout, is retryable.

Secret rotation: we sign with the FIRST secret of ``ERP_WEBHOOK_SECRET``; a receiver that accepts a
signature made with any of its configured secrets (``verify_signature(..., secrets=[new, old])``)
keeps working while both sides switch over.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import requests

from erp_sync.outbox import ERP_TOPICS
from erp_sync.subscribers import RetryableError, Subscriber

SIGNATURE_HEADER = "RenoPay-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
DEFAULT_TIMEOUT = (3.05, 10.0)  # (connect, read) seconds
DEFAULT_TOLERANCE = 300  # seconds a receiver should accept between t= and its clock


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes we send (and sign): compact UTF-8 JSON."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return mac.hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify_signature(
    header: str,
    body: bytes,
    secrets: Iterable[str],
    *,
    now: float | None = None,
    tolerance: int = DEFAULT_TOLERANCE,
) -> bool:
    """Receiver side: True when ``header`` signs ``body`` with any of ``secrets`` within tolerance."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    candidates = parts.get("v1", [])
    return any(
        hmac.compare_digest(signature(secret, timestamp, body), given)
        for secret in secrets
        for given in candidates
    )


class ErpWebhook(Subscriber):
    """Subscriber ``erp``: pushes contract events to ``ERP_WEBHOOK_URL``."""

    name = "erp"
    topics = frozenset(str(t) for t in ERP_TOPICS)

    def __init__(
        self,
        url: str,
        secrets: Iterable[str],
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ):
        self.url = url
        self._secrets = tuple(secrets)
        self.timeout = timeout
        self._clock = clock
        # requests.Session is not guaranteed thread-safe: one keep-alive session per thread.
        self._local = threading.local()

    def not_ready_reason(self) -> str | None:
        if not self.url:
            return "ERP_WEBHOOK_URL is not configured; deliveries wait until it is"
        if not self._secrets:
            return "ERP_WEBHOOK_SECRET is not configured; deliveries wait until it is"
        return None

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = "RenoPay-Webhook/1"
            self._local.session = session
        return session

    def headers_for(self, payload: Mapping[str, Any], body: bytes) -> dict[str, str]:
        return {
            "Content-Type": "application/json; charset=utf-8",
            SIGNATURE_HEADER: signature_header(self._secrets[0], int(self._clock()), body),
            IDEMPOTENCY_HEADER: str(payload["id"]),
        }

    def deliver(self, payload: Mapping[str, Any]) -> None:
        body = encode_body(payload)
        headers = self.headers_for(payload, body)
        try:
            response = self._session().post(self.url, data=body, headers=headers, timeout=self.timeout)
        except requests.Timeout as exc:
            raise RetryableError(f"timeout ({type(exc).__name__})") from exc
        except requests.RequestException as exc:
            raise RetryableError(f"connection failed ({type(exc).__name__})") from exc
        with response:
            if 200 <= response.status_code < 300:
                return
            snippet = response.text[:200].replace("\n", " ")
            raise RetryableError(f"HTTP {response.status_code}: {snippet}")

    def close(self) -> None:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None
