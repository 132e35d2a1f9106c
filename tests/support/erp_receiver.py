"""A signature-verifying ERP webhook receiver for tests and benchmarks.

It behaves like a careful ERP: it verifies ``RenoPay-Signature`` (any configured secret), dedupes by
``Idempotency-Key`` (a repeat is answered 200 and not processed again), and records what it saw.
It also counts overlaps: a request whose key is already being handled by another request, and
truncated requests: a body shorter than its Content-Length (a sender killed mid-request leaves one;
answered 400 without checking the signature, which could not verify anyway).
Modes: ``ok`` (200), ``error`` (500), ``slow`` (sleeps ``delay`` then 200 — a timeout for a short
client timeout), ``down`` is simulated by stopping the server.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from erp_sync.webhook import verify_signature


@dataclass
class Receiver:
    secrets: tuple[str, ...]
    mode: str = "ok"
    delay: float = 0.0
    processed: list[dict[str, Any]] = field(default_factory=list)  # first delivery of each key, in order
    requests_by_key: Counter[str] = field(default_factory=Counter)
    bad_signatures: int = 0
    overlaps: int = 0
    truncated: int = 0
    answered: Counter[int] = field(default_factory=Counter)
    _in_flight: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        if len(body) < length:
            with self._lock:
                self.truncated += 1
            return self._answer(start_response, 400)
        key = environ.get("HTTP_IDEMPOTENCY_KEY", "")
        if not verify_signature(environ.get("HTTP_RENOPAY_SIGNATURE", ""), body, self.secrets):
            with self._lock:
                self.bad_signatures += 1
            return self._answer(start_response, 400)
        with self._lock:
            self.requests_by_key[key] += 1
            if self._in_flight[key]:
                self.overlaps += 1
            self._in_flight[key] += 1
        try:
            return self._handle(start_response, key, body)
        finally:
            with self._lock:
                self._in_flight[key] -= 1

    def _handle(self, start_response: Any, key: str, body: bytes) -> Iterable[bytes]:
        mode, delay = self.mode, self.delay
        if delay:
            time.sleep(delay)
        if mode == "error":
            return self._answer(start_response, 500)
        payload = json.loads(body)
        with self._lock:
            if payload["id"] == key and key not in self._seen:
                self._seen.add(key)
                self.processed.append(payload)
        return self._answer(start_response, 200)

    def _answer(self, start_response: Any, status: int) -> Iterable[bytes]:
        with self._lock:
            self.answered[status] += 1
        start_response(f"{status} X", [("Content-Type", "text/plain")])
        return [b"ok" if status == 200 else b"no"]

    def __post_init__(self) -> None:
        self._seen: set[str] = set()

    @property
    def processed_ids(self) -> set[str]:
        with self._lock:
            return {p["id"] for p in self.processed}

    @property
    def busy(self) -> bool:
        """A request is being handled right now."""
        with self._lock:
            return any(self._in_flight.values())

    @property
    def total_requests(self) -> int:
        with self._lock:
            return sum(self.requests_by_key.values())

    def seqs_by_bill(self) -> dict[str, list[int]]:
        with self._lock:
            found: dict[str, list[int]] = defaultdict(list)
            for payload in self.processed:
                if payload.get("bill"):
                    found[payload["bill"]["number"]].append(payload["bill"]["seq"])
            return dict(found)


def wait_until(predicate: Any, timeout: float = 60.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
