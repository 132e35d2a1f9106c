"""Structured JSON logs with a request id, and ``/metrics`` in Prometheus text format.

Counters that several processes bump (requests, notification outcomes, deliveries, job runs) live in
Redis when ``REDIS_URL`` is set, so gunicorn workers and the scheduler worker add up; otherwise in
this process. Gauges that describe stored state (outbox depth, oldest due delivery) are read from the
database at scrape time, so every process reports the same truth.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from flask import Flask, Response, g, request
from sqlalchemy import func, select

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_OPENID = re.compile(r"\bo[A-Za-z0-9_-]{6,}([A-Za-z0-9_-]{4})\b")
_SECRET_PARAM = re.compile(
    r"(?i)\b(access_token|secret|appsecret|apiv3_key|signature|msg_signature|paySign|code)=(\"?)[^&\s\"',]+"
)
_AUTH = re.compile(r"(?i)(authorization[\"']?:?\s*)[^\n]*")


def mask(text: str) -> str:
    """Hide openids (keep the last 4 characters) and any secret-bearing query parameter."""
    text = _SECRET_PARAM.sub(lambda m: f"{m.group(1)}={m.group(2)}***", text)
    text = _AUTH.sub(lambda m: f"{m.group(1)}***", text)
    return _OPENID.sub(lambda m: "o***" + m.group(1), text)


class MaskingFilter(logging.Filter):
    """Masks a record's message where it is logged (the development server's access log, which
    prints whole request lines: access tokens, signatures, openids in query strings)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = mask(record.getMessage()), None
        return True


_DEV_SERVER_MASK = MaskingFilter()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": mask(record.getMessage()),
            "request_id": request_id_var.get(),
        }
        if record.exc_info:
            entry["exc"] = mask(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    # werkzeug's access log prints full query strings (signatures, codes): keep it quiet.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


class Counters:
    """Labelled counters; in Redis (shared by every process) or in memory."""

    def __init__(self, redis_url: str | None = None, namespace: str = ""):
        # One hash per Official Account, so deployments sharing a Redis never mix their counters.
        self.key = f"renopay:metrics:{namespace}" if namespace else "renopay:metrics"
        self._lock = threading.Lock()
        self._local: Counter[str] = Counter()
        self._redis: Any = None
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)

    @staticmethod
    def _key(name: str, labels: Mapping[str, str]) -> str:
        return json.dumps([name, sorted(labels.items())], ensure_ascii=False)

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        key = self._key(name, labels)
        if self._redis is not None:
            try:
                self._redis.hincrby(self.key, key, amount)
                return
            except Exception:  # metrics must never break a payment; fall back to this process
                logging.getLogger(__name__).debug("metrics: redis unavailable", exc_info=True)
        with self._lock:
            self._local[key] += amount

    def snapshot(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], int]:
        merged: Counter[str] = Counter()
        if self._redis is not None:
            try:
                merged.update({k.decode(): int(v) for k, v in self._redis.hgetall(self.key).items()})
            except Exception:  # scrape what this process has
                logging.getLogger(__name__).debug("metrics: redis unavailable", exc_info=True)
        with self._lock:
            merged.update(self._local)
        out: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        for key, value in merged.items():
            name, labels = json.loads(key)
            out[(name, tuple((str(a), str(b)) for a, b in labels))] = value
        return out


_counters = Counters()


def counters() -> Counters:
    return _counters


def inc(name: str, amount: int = 1, **labels: str) -> None:
    """Bump a counter from anywhere (``observability.inc("renopay_job_runs_total", job="relay")``)."""
    _counters.inc(name, amount, **labels)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _line(name: str, labels: Iterable[tuple[str, str]], value: float) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{inner}}} {value}" if inner else f"{name} {value}"


def _outbox_gauges(app: Flask) -> list[str]:
    from db import utcnow
    from erp_sync.outbox import DeliveryStatus, OutboxDelivery

    lines = [
        "# HELP renopay_outbox_depth Deliveries by subscriber and status.",
        "# TYPE renopay_outbox_depth gauge",
    ]
    database = app.extensions["renopay.db"]
    with database.session_factory() as session:
        rows = session.execute(
            select(OutboxDelivery.subscriber, OutboxDelivery.status, func.count()).group_by(
                OutboxDelivery.subscriber, OutboxDelivery.status
            )
        ).all()
        oldest = session.execute(
            select(OutboxDelivery.subscriber, func.min(OutboxDelivery.created_at))
            .where(OutboxDelivery.status == DeliveryStatus.pending.value)
            .group_by(OutboxDelivery.subscriber)
        ).all()
    seen = {(sub, status): n for sub, status, n in rows}
    subscribers = sorted({sub for sub, _ in seen})
    for sub in subscribers:
        for status in DeliveryStatus:
            lines.append(
                _line(
                    "renopay_outbox_depth",
                    [("subscriber", sub), ("status", status.value)],
                    seen.get((sub, status.value), 0),
                )
            )
    lines += [
        "# HELP renopay_outbox_oldest_pending_seconds Age of the oldest undelivered event.",
        "# TYPE renopay_outbox_oldest_pending_seconds gauge",
    ]
    now = utcnow()
    ages = {sub: (now - when).total_seconds() if when else 0.0 for sub, when in oldest}
    for sub in subscribers:
        lines.append(
            _line(
                "renopay_outbox_oldest_pending_seconds",
                [("subscriber", sub)],
                round(max(ages.get(sub, 0.0), 0.0), 3),
            )
        )
    return lines


def render_metrics(app: Flask) -> str:
    lines: list[str] = []
    by_name: dict[str, list[tuple[tuple[tuple[str, str], ...], int]]] = {}
    for (name, labels), value in sorted(_counters.snapshot().items()):
        by_name.setdefault(name, []).append((labels, value))
    for name, series in by_name.items():
        lines.append(f"# TYPE {name} counter")
        lines += [_line(name, labels, value) for labels, value in series]
    try:
        lines += _outbox_gauges(app)
        lines.append("renopay_database_up 1")
    except Exception:  # a scrape during a database outage still answers, and says so
        logging.getLogger(__name__).warning("metrics: database unavailable", exc_info=True)
        lines.append("renopay_database_up 0")
    return "\n".join(lines) + "\n"


def init_app(app: Flask, redis_url: str | None = None, namespace: str = "") -> None:
    global _counters
    werkzeug_log = logging.getLogger("werkzeug")  # `flask run` / `make run`: its access log
    if _DEV_SERVER_MASK not in werkzeug_log.filters:
        werkzeug_log.addFilter(_DEV_SERVER_MASK)
    if redis_url:
        _counters = Counters(redis_url, namespace)

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if re.fullmatch(r"[A-Za-z0-9._-]{8,64}", incoming) else secrets.token_hex(8)
        g.request_id_token = request_id_var.set(rid)
        g.request_started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        inc(
            "renopay_http_requests_total",
            route=route,
            method=request.method,
            status=str(response.status_code),
        )
        response.headers["X-Request-ID"] = request_id_var.get()
        return response

    @app.teardown_request
    def _reset(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id_var.reset(token)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(render_metrics(app), mimetype="text/plain; version=0.0.4")
