"""Scheduled jobs (APScheduler 3): each runs inside an app context, ``max_instances=1`` and
``coalesce=True``, and counts its runs and failures in ``app.extensions["renopay.job_stats"]``.

Features add their jobs with ``register_job(app, job_id, func, trigger=None)`` from their own
``init_app``; a known slot id (see ``SLOTS``) brings its trigger. A job registered after the
scheduler started is added to it live, so the order of ``init_app`` calls does not matter.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from flask import Flask

import observability
from db import utcnow

log = logging.getLogger("renopay.scheduler")

JOBS = "renopay.jobs"
STATS = "renopay.job_stats"
SCHEDULER = "renopay.scheduler"
RELAY_INTERVAL_SECONDS = 2


def slot_trigger(job_id: str) -> BaseTrigger | None:
    """The schedule of ARCHITECTURE Part B for each named job slot."""
    slots: dict[str, Callable[[], BaseTrigger]] = {
        "relay": lambda: IntervalTrigger(seconds=RELAY_INTERVAL_SECONDS),
        "recover_pending_attempts": lambda: IntervalTrigger(minutes=1),
        "close_expired_attempts": lambda: IntervalTrigger(minutes=1),
        "sync_refunds": lambda: IntervalTrigger(minutes=1),
        "trade_bill": lambda: CronTrigger(hour=10, minute=30, timezone="Asia/Shanghai"),
        "token_refresh": lambda: IntervalTrigger(minutes=1),
    }
    factory = slots.get(job_id)
    return factory() if factory else None


SLOTS = ("relay", "recover_pending_attempts", "close_expired_attempts", "sync_refunds", "trade_bill",
         "token_refresh")


@dataclass
class JobSpec:
    job_id: str
    func: Callable[[], object]
    trigger: BaseTrigger


@dataclass
class JobStats:
    runs: int = 0
    failures: int = 0
    last_started_at: dt.datetime | None = None
    last_duration_s: float | None = None
    last_error: str | None = None


class JobStatsBook:
    """Thread-safe counters, read by ``outbox status``/``worker --list`` and (later) /metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[str, JobStats] = {}

    def started(self, job_id: str) -> None:
        with self._lock:
            self._stats.setdefault(job_id, JobStats()).last_started_at = utcnow()

    def finished(self, job_id: str, duration: float, error: str | None) -> None:
        with self._lock:
            stats = self._stats.setdefault(job_id, JobStats())
            stats.runs += 1
            stats.last_duration_s = duration
            if error is not None:
                stats.failures += 1
                stats.last_error = error[:300]

    def snapshot(self) -> dict[str, JobStats]:
        with self._lock:
            return {k: JobStats(**vars(v)) for k, v in self._stats.items()}


def job_stats(app: Flask) -> JobStatsBook:
    book: JobStatsBook = app.extensions.setdefault(STATS, JobStatsBook())
    return book


def jobs(app: Flask) -> dict[str, JobSpec]:
    found: dict[str, JobSpec] = app.extensions.setdefault(JOBS, {})
    return found


def register_job(
    app: Flask, job_id: str, func: Callable[[], object], trigger: BaseTrigger | None = None
) -> JobSpec:
    """Schedule ``func`` (called inside an app context) under ``job_id``; replaces a previous one."""
    trigger = trigger or slot_trigger(job_id)
    if trigger is None:
        raise ValueError(f"job {job_id!r} is not a known slot; give it a trigger")
    spec = JobSpec(job_id, func, trigger)
    jobs(app)[job_id] = spec
    scheduler: BaseScheduler | None = app.extensions.get(SCHEDULER)
    if scheduler is not None:
        _add(app, scheduler, spec)
    return spec


def run_job(app: Flask, job_id: str) -> bool:
    """Run one job now in an app context; count it. True when it succeeded."""
    spec = jobs(app)[job_id]
    book = job_stats(app)
    book.started(job_id)
    started = time.monotonic()
    error: str | None = None
    try:
        with app.app_context():
            spec.func()
    except Exception as exc:  # a failing job is counted and logged; the scheduler keeps running
        error = f"{type(exc).__name__}: {exc}"
        log.exception("job %s failed", job_id)
    book.finished(job_id, time.monotonic() - started, error)
    observability.inc("renopay_job_runs_total", job=job_id, result="ok" if error is None else "failed")
    return error is None


def _add(app: Flask, scheduler: BaseScheduler, spec: JobSpec) -> None:
    scheduler.add_job(
        run_job,
        trigger=spec.trigger,
        args=(app, spec.job_id),
        id=spec.job_id,
        name=spec.job_id,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=60,
        replace_existing=True,
    )


def start(app: Flask, scheduler: BaseScheduler, **start_kwargs: Any) -> BaseScheduler:
    """Add every registered job to ``scheduler`` and start it (blocks for a BlockingScheduler)."""
    app.extensions[SCHEDULER] = scheduler
    for spec in list(jobs(app).values()):
        _add(app, scheduler, spec)
    missing = [slot for slot in SLOTS if slot not in jobs(app)]
    if missing:
        log.info("scheduler: job slots not filled yet: %s", ", ".join(missing))
    scheduler.start(**start_kwargs)
    return scheduler


def stop(app: Flask) -> None:
    scheduler: BaseScheduler | None = app.extensions.pop(SCHEDULER, None)
    if scheduler is not None and scheduler.running:
        scheduler.shutdown(wait=True)
