"""Callbacks to the merchant's notify_url, sent from background threads the way WeChat sends them.

Every notification is an ``encrypt-resource`` envelope (AES-256-GCM with the APIv3 key) signed with
the platform key. A non-2xx answer, a timeout or a connection error is retried on WeChat's schedule
(multiplied by ``retry_scale``). Fault switches change how the next notifications travel: delayed,
duplicated, sent concurrently, held back and released in reverse order, lost, preceded by a
``WECHATPAY/SIGNTEST/`` probe. Every attempt is recorded.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import requests

from .crypto import Crypto
from .errors import now_cst, rfc3339

# WeChat's documented retry intervals after the first attempt (24 h 4 min in total).
RETRY_SCHEDULE = (15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600)
_ANSWER_LIMIT = 1000


@dataclass
class NotificationFaults:
    delay: float = 0.0  # seconds before the first attempt
    duplicate: int = 1  # copies sent one after another
    concurrent: int = 1  # copies sent at the same moment from separate threads
    out_of_order: bool = False  # hold notifications until release(); then send them newest first
    lost: bool = False  # never send (the payment still happened)
    signtest: bool = False  # send a SIGNTEST probe before the real notification
    count: int | None = None  # how many notifications these faults apply to (None: until cleared)

    def active(self) -> bool:
        return self != NotificationFaults(count=self.count)


class Notifier:
    def __init__(
        self, crypto: Crypto, serial: Callable[[], str], retry_scale: float = 1.0, timeout: float = 5.0
    ):
        self.crypto, self._serial = crypto, serial
        self.retry_scale, self.timeout = retry_scale, timeout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.faults = NotificationFaults()
        self.notifications: list[dict[str, Any]] = []
        self.deliveries: list[dict[str, Any]] = []
        self._held: list[dict[str, Any]] = []

    # -- configuration -----------------------------------------------------------------------------
    def set_faults(self, **switches: Any) -> NotificationFaults:
        with self._lock:
            self.faults = NotificationFaults(**switches)
            return self.faults

    def _take_faults(self) -> NotificationFaults:
        faults = self.faults
        if faults.count is not None:
            if faults.count <= 0 or not faults.active():
                return NotificationFaults()
            self.faults = NotificationFaults(**{**asdict(faults), "count": faults.count - 1})
        return faults

    def reset(self) -> None:
        """Forget everything and cancel pending retries (threads in flight stop recording)."""
        with self._lock:
            self._stop.set()
            self._stop = threading.Event()
            self.faults = NotificationFaults()
            self.notifications, self.deliveries, self._held = [], [], []

    # -- sending -----------------------------------------------------------------------------------
    def envelope(self, event_type: str, summary: str, original_type: str, resource: dict[str, Any]) -> str:
        plaintext = json.dumps(resource, ensure_ascii=False, separators=(",", ":"))
        envelope = {
            "id": str(uuid.uuid4()),
            "create_time": rfc3339(now_cst()),
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": summary,
            "resource": {"original_type": original_type, **self.crypto.encrypt(plaintext, original_type)},
        }
        return json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))

    def submit(
        self, url: str, event_type: str, summary: str, original_type: str, resource: dict[str, Any], ref: str
    ) -> dict[str, Any]:
        body = self.envelope(event_type, summary, original_type, resource)
        record = {
            "id": json.loads(body)["id"],
            "event_type": event_type,
            "url": url,
            "ref": ref,
            "state": "sending",
            "body": body,
            "delivered": 0,
        }
        with self._lock:
            faults = self._take_faults()
            stop = self._stop
            self.notifications.append(record)
            if faults.lost:
                record["state"] = "lost"
                return record
            if faults.out_of_order:
                record["state"] = "held"
                self._held.append(record)
                return record
        copies = max(1, faults.concurrent)
        if copies > 1:
            if faults.signtest:
                self._start(self._attempt, record, 0, 1, stop, True)
            barrier = threading.Barrier(copies)
            for copy in range(copies):
                self._start(self._concurrent_copy, record, copy, barrier, faults.delay, stop)
        else:
            items = [(record, c) for c in range(max(1, faults.duplicate))]
            self._start(self._sequence, items, faults.delay, stop, faults.signtest)
        return record

    def release(self) -> int:
        """Send the held notifications, newest first, one after another."""
        with self._lock:
            held, self._held = self._held, []
            stop = self._stop
            for record in held:
                record["state"] = "sending"
        self._start(self._sequence, [(record, 0) for record in reversed(held)], 0.0, stop)
        return len(held)

    def probe(self, url: str, event_type: str, resource: dict[str, Any], ref: str) -> dict[str, Any]:
        """Send one SIGNTEST probe (a deliberately bad signature); never retried."""
        body = self.envelope(event_type, "支付成功", "transaction", resource)
        record = {
            "id": json.loads(body)["id"],
            "event_type": event_type,
            "url": url,
            "ref": ref,
            "state": "probe",
            "body": body,
            "delivered": 0,
        }
        with self._lock:
            self.notifications.append(record)
            stop = self._stop
        self._start(self._attempt, record, 0, 1, stop, True)
        return record

    @staticmethod
    def _start(target: Callable[..., Any], *args: Any) -> None:
        threading.Thread(target=target, args=args, name="wechatpay-notify", daemon=True).start()

    def _sequence(
        self,
        items: list[tuple[dict[str, Any], int]],
        delay: float,
        stop: threading.Event,
        probe_first: bool = False,
    ) -> None:
        if delay and stop.wait(delay):
            return
        if probe_first and items:
            self._attempt(items[0][0], 0, 1, stop, True)
        for record, copy in items:
            if not self._attempt(record, copy, 1, stop):
                self._start(self._retry, record, copy, stop)

    def _concurrent_copy(
        self,
        record: dict[str, Any],
        copy: int,
        barrier: threading.Barrier,
        delay: float,
        stop: threading.Event,
    ) -> None:
        if delay and stop.wait(delay):
            return
        try:
            barrier.wait(timeout=10)
        except threading.BrokenBarrierError:
            pass
        if not self._attempt(record, copy, 1, stop):
            self._retry(record, copy, stop)

    def _retry(self, record: dict[str, Any], copy: int, stop: threading.Event) -> None:
        for number, seconds in enumerate(RETRY_SCHEDULE, start=2):
            if stop.wait(seconds * self.retry_scale):
                return
            if self._attempt(record, copy, number, stop):
                return
        with self._lock:
            if record["state"] == "sending":
                record["state"] = "gave_up"

    def _attempt(
        self, record: dict[str, Any], copy: int, number: int, stop: threading.Event, signtest: bool = False
    ) -> bool:
        if stop.is_set():
            return True
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Mozilla/4.0",
            "Pragma": "no-cache",
            **self.crypto.signature_headers(record["body"], self._serial(), signtest=signtest),
        }
        entry: dict[str, Any] = {
            "notification_id": record["id"],
            "event_type": record["event_type"],
            "ref": record["ref"],
            "url": record["url"],
            "copy": copy,
            "attempt": number,
            "signtest": signtest,
            "at": rfc3339(now_cst()),
            "status": None,
            "answer": None,
            "error": None,
        }
        started = time.monotonic()
        try:
            answer = requests.post(
                record["url"], data=record["body"].encode(), headers=headers, timeout=self.timeout
            )
            entry["status"], entry["answer"] = answer.status_code, answer.text[:_ANSWER_LIMIT]
        except requests.RequestException as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"[:_ANSWER_LIMIT]
        entry["elapsed_ms"] = round((time.monotonic() - started) * 1000)
        ok = entry["status"] is not None and 200 <= entry["status"] < 300
        with self._lock:
            if stop.is_set():
                return True
            self.deliveries.append(entry)
            if ok and not signtest:
                record["delivered"] += 1
                record["state"] = "delivered"
        return ok or signtest

    # -- views -------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "faults": asdict(self.faults),
                "held": len(self._held),
                "notifications": [{k: v for k, v in r.items() if k != "body"} for r in self.notifications],
                "deliveries": [dict(d) for d in self.deliveries],
            }
