"""A built-in ERP for sandbox mode: ``POST /sandbox/erp/events`` receives RenoPay's webhook, checks
``RenoPay-Signature`` with the configured ``ERP_WEBHOOK_SECRET`` (any of them, as a real receiver
during rotation would) and records what arrived, for the simulator's ERP panel.

It answers like a careful ERP: 204 for a good signature (also for a repeated ``Idempotency-Key``,
marked as a duplicate), 401 for a bad one — so the relay retries and the panel shows why.
Records live in memory (the sandbox's stand-ins forget on restart too).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request

from erp_sync.webhook import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify_signature

PATH = "/sandbox/erp/events"
EXTENSION = "renopay.sandbox_erp"
MAX_RECORDS = 500
SANDBOX_SECRET = "sandbox-erp-webhook-secret-0001"  # noqa: S105 - the public default ERP_WEBHOOK_SECRET of sandbox mode

bp = Blueprint("sandbox_erp", __name__)


class ErpInbox:
    """What the sandbox ERP received, in arrival order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[dict[str, Any]] = []
        self._seen: set[str] = set()

    def record(self, headers: dict[str, str], body: bytes, signature_ok: bool) -> dict[str, Any]:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        event: dict[str, Any] = payload if isinstance(payload, dict) else {}
        found = event.get("bill")
        bill: dict[str, Any] = found if isinstance(found, dict) else {}
        key = headers.get(IDEMPOTENCY_HEADER, "")
        with self._lock:
            duplicate = signature_ok and key in self._seen
            if signature_ok:
                self._seen.add(key)
            entry = {
                "n": len(self._records) + 1,
                "at": time.time(),
                "id": event.get("id"),
                "idempotency_key": key,
                "type": event.get("type"),
                "bill": bill.get("number"),
                "seq": bill.get("seq"),
                "status": bill.get("status"),
                "paid_fen": bill.get("paid_fen"),
                "amount_fen": bill.get("amount_fen"),
                "signature_ok": signature_ok,
                "duplicate": duplicate,
                "payload": event,
            }
            self._records.append(entry)
            del self._records[:-MAX_RECORDS]
        return entry

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._records]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._seen.clear()


def inbox(app: Flask) -> ErpInbox:
    box: ErpInbox = app.extensions.setdefault(EXTENSION, ErpInbox())
    return box


@bp.post(PATH)
def receive() -> Response:
    settings = current_app.extensions["renopay.settings"]
    body = request.get_data(cache=False)
    ok = verify_signature(request.headers.get(SIGNATURE_HEADER, ""), body, settings.erp_webhook_secrets)
    inbox(current_app).record(dict(request.headers), body, ok)
    if not ok:
        return Response('{"error":"bad signature"}', status=401, mimetype="application/json")
    return Response(status=204)


def init_app(app: Flask) -> None:
    """Register the receiver when the app pushes its ERP events to it."""
    settings = app.extensions["renopay.settings"]
    if settings.erp_webhook_url.rstrip("/").endswith(PATH):
        inbox(app)
        app.register_blueprint(bp)
