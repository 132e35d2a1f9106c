"""The soak's ERP: a local HTTP server that verifies ``RenoPay-Signature``, stores each event once by
``Idempotency-Key`` (a re-send is answered 200 and not stored again) and can be switched down.

Modes: ``ok`` (store, 204), ``refuse`` (the listening socket is closed: connection refused),
``error`` (500, nothing stored), ``slow`` (store, then sleep past RenoPay's 10 s read timeout, so the
relay counts a failure and re-sends the same key).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from erp_sync.webhook import verify_signature

SLOW_SECONDS = 11.0


class ErpReceiver:
    def __init__(self, secret: str, port: int) -> None:
        self.secret = secret
        self.port = port
        self.mode = "ok"
        self.lock = threading.Lock()
        self.events: dict[str, dict[str, Any]] = {}  # Idempotency-Key → first payload stored
        self.requests_by_key: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()
        self.bad_signatures = 0
        self.key_mismatches = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/renopay/events"

    # ------------------------------------------------------------------ serving

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = receiver.handle(self.headers.get("RenoPay-Signature", ""),
                                         self.headers.get("Idempotency-Key", ""), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="soak-erp", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def set_mode(self, mode: str) -> None:
        if mode == "refuse" and self._server is not None:
            self.stop()
        elif mode != "refuse" and self._server is None:
            self.start()
        self.mode = mode

    # ------------------------------------------------------------------ one request

    def handle(self, signature: str, key: str, body: bytes) -> int:
        if not verify_signature(signature, body, [self.secret]):
            return self._answer("401 bad signature", 401, bad=True)
        mode = self.mode
        if mode == "error":
            return self._answer("500 (switched)", 500)
        payload = json.loads(body)
        with self.lock:
            self.requests_by_key[key] += 1
            if payload.get("id") != key:
                self.key_mismatches += 1
            repeat = key in self.events
            self.events.setdefault(key, payload)
        if mode == "slow":
            threading.Event().wait(SLOW_SECONDS)
        return self._answer("200 repeat" if repeat else "204 stored", 200 if repeat else 204)

    def _answer(self, label: str, status: int, *, bad: bool = False) -> int:
        with self.lock:
            self.answers[label] += 1
            self.bad_signatures += bad
        return status

    # ------------------------------------------------------------------ views

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.events.values())

    def resent(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.requests_by_key.values())
