"""Structured JSON logs with a request id, and ``/metrics`` in Prometheus text format.

Counters that several processes bump (requests, notification outcomes, deliveries, job runs) live in
Redis when ``REDIS_URL`` is set, so gunicorn workers and the scheduler worker add up; otherwise in
this process. Gauges that describe stored state (outbox depth, oldest due delivery) are read from the
database at scrape time, so every process reports the same truth.
"""

from __future__ import annotations

import atexit
import contextvars
import json
import logging
import os
import re
import secrets
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
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


@lru_cache(maxsize=4096)
def _field(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    """A counter's field in the Redis hash (and key in memory): the same text as ever, so counts
    written by an earlier version go on adding up."""
    return json.dumps([name, labels], ensure_ascii=False)


class Counters:
    """Labelled counters; in Redis (shared by every process) or in memory.

    ``inc`` only adds to this process's pending counts — no network on a request's path (it was
    two Redis round trips per payment notification). With Redis they are written in one round trip
    (a MULTI of HINCRBYs) at most ``flush_every`` seconds later, by a thread that the process's
    first count starts, and before every scrape of this process. A flush that fails keeps its counts
    for the next one, so a Redis outage delays counts and loses none; what a process had not yet
    flushed when it died (up to ``flush_every`` seconds of counts) is lost, as a process-local
    counter would be. A forked child starts with nothing pending: the parent flushes its own counts."""

    def __init__(self, redis_url: str | None = None, namespace: str = "", *, flush_every: float = 1.0):
        # One hash per Official Account, so deployments sharing a Redis never mix their counters.
        self.key = f"renopay:metrics:{namespace}" if namespace else "renopay:metrics"
        self.flush_every = flush_every
        self._redis: Any = None
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._reset()
        _RESET_AFTER_FORK.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()  # (a copied lock may be held by a thread the child lacks)
        self._flushing = threading.Lock()
        self._pending: Counter[str] = Counter()  # without Redis: every count of this process
        self._flusher: threading.Thread | None = None

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        field = _field(name, tuple(sorted(labels.items())))
        with self._lock:
            self._pending[field] += amount
            if self._redis is not None and self._flusher is None:
                self._start_flusher()

    def _start_flusher(self) -> None:
        """The thread that writes pending counts to Redis (started by the first count of a process).
        It holds the counters weakly: replaced ones (a new app) are flushed a last time, then it ends."""
        self._flusher = threading.Thread(target=_flush_forever, args=(weakref.ref(self),),
                                         name="renopay-metrics", daemon=True)
        self._flusher.start()

    def flush(self) -> bool:
        """Write the pending counts to Redis in one round trip: once it answers True, every count made
        before the call is in Redis. False (the counts kept for the next flush) if Redis did not take
        them."""
        if self._redis is None:
            return True
        with self._flushing:  # a flush in flight (the thread's) is over before this one answers
            with self._lock:
                pending, self._pending = self._pending, Counter()
            if not pending:
                return True
            try:
                with _REDIS_CALLS:
                    pipe = self._redis.pipeline(transaction=True)  # all of them or none
                    for field, amount in pending.items():
                        pipe.hincrby(self.key, field, amount)
                    pipe.execute()
                return True
            except Exception:  # metrics must never break anything; keep the counts for the next flush
                logging.getLogger(__name__).debug("metrics: redis unavailable", exc_info=True)
                with self._lock:
                    self._pending.update(pending)
                return False

    def snapshot(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], int]:
        """Every process's counts (with Redis; this process's own first flushed), else this one's."""
        merged: Counter[str] = Counter()
        if self._redis is not None and self.flush():
            try:
                with _REDIS_CALLS:
                    stored = self._redis.hgetall(self.key)
                merged.update({k.decode(): int(v) for k, v in stored.items()})
            except Exception:  # scrape what this process has
                logging.getLogger(__name__).debug("metrics: redis unavailable", exc_info=True)
        with self._lock:
            merged.update(self._pending)
        out: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        for key, value in merged.items():
            name, labels = json.loads(key)
            out[(name, tuple((str(a), str(b)) for a, b in labels))] = value
        return out


def _flush_forever(ref: weakref.ReferenceType[Counters]) -> None:
    while True:
        counters_ = ref()
        if counters_ is None:  # replaced (a new app) and collected
            return
        interval = counters_.flush_every
        counters_.flush()
        del counters_
        time.sleep(interval)


def _flush_at_exit() -> None:
    _counters.flush()  # a worker's last counts (a graceful exit runs this; a kill loses them)


atexit.register(_flush_at_exit)

# Around a fork: no thread of ours is inside the Redis client (a fork waits for the call in flight,
# at most the client's 0.5 s timeout), so the client's own locks are free in the child — redis-py
# re-initialises its pool there under them — and the child's counters start afresh: its copied
# pending counts are the parent's to flush.
_REDIS_CALLS = threading.Lock()
_RESET_AFTER_FORK: weakref.WeakSet[Counters] = weakref.WeakSet()


def _reset_after_fork() -> None:
    _REDIS_CALLS.release()  # taken before the fork by the thread that forked, the child's only one
    for counters_ in list(_RESET_AFTER_FORK):
        counters_._reset()


os.register_at_fork(before=_REDIS_CALLS.acquire, after_in_parent=_REDIS_CALLS.release,
                    after_in_child=_reset_after_fork)
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
        replaced, _counters = _counters, Counters(redis_url, namespace)
        replaced.flush()

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
