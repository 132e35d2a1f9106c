"""The event backbone and the ERP boundary: outbox, relay, webhook, scheduler, inbound ERP API.

Public entry points for other features:
- ``register_subscriber(app, subscriber)`` — receive outbox events (see erp_sync/subscribers.py)
- ``register_job(app, job_id, func, trigger=None)`` — a scheduled job (see erp_sync/scheduler.py)
- ``relay_for(app)`` — the app's Relay (``.drain()`` delivers everything due now)
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Callable
from typing import Any

import click
from flask import Flask

from erp_sync.scheduler import register_job
from erp_sync.subscribers import PermanentError, RetryableError, Subscriber, register_subscriber, subscribers

__all__ = [
    "PermanentError",
    "RetryableError",
    "Subscriber",
    "init_app",
    "on_dead_letter",
    "register_job",
    "register_subscriber",
    "relay_for",
    "start_in_process",
]

log = logging.getLogger("renopay.erp_sync")
RELAY = "renopay.relay"
DEAD_LETTER_HOOKS = "renopay.relay.dead_letter_hooks"
IN_PROCESS_FLAG = "scheduler_in_process"  # Settings.extra: force (True) or forbid (False)

def init_app(app: Flask) -> None:
    from erp_sync import api, cli
    from erp_sync.webhook import ErpWebhook

    settings = app.extensions["renopay.settings"]
    register_subscriber(app, ErpWebhook(settings.erp_webhook_url, settings.erp_webhook_secrets))
    api.init_api(app)
    cli.register(app)
    register_job(app, "relay", lambda: _relay_job(app))
    _register_recovery_jobs(app)
    if _in_process_wanted(settings.extra.get(IN_PROCESS_FLAG), settings.scheduler_enabled):
        start_in_process(app)


def relay_for(app: Flask) -> Any:
    """The Relay of this app (built on first use, shared by the scheduler and the CLI)."""
    from erp_sync.relay import Relay

    relay = app.extensions.get(RELAY)
    if relay is None:
        relay = app.extensions[RELAY] = Relay(
            app.extensions["renopay.db"], subscribers(app), on_dead=lambda *args: _dead_letters(app, *args)
        )
    return relay


def on_dead_letter(app: Flask, hook: Callable[..., None]) -> None:
    """Call ``hook(session, subscriber_name, claimed_items)`` in the transaction that dead-letters
    deliveries (e.g. to emit an alert event that commits with the dead letter, exactly once)."""
    app.extensions.setdefault(DEAD_LETTER_HOOKS, []).append(hook)


def _dead_letters(app: Flask, *args: Any) -> None:
    for hook in app.extensions.get(DEAD_LETTER_HOOKS, ()):
        hook(*args)


def _relay_job(app: Flask) -> None:
    total = relay_for(app).drain(max_seconds=30)
    if total.attempted:
        log.info("relay: delivered %d, failed %d, dead %d", total.delivered, total.failed, total.dead)


def _register_recovery_jobs(app: Flask) -> None:
    """The payments issue's recovery (payments/recovery.py, payments/refund_executor.py), each run with
    the app's database and WeChat Pay gateway (resolved at run time, so wiring order doesn't matter)."""
    from db import current_db
    from payments import reconcile, recovery, refund_executor, runtime

    jobs: dict[str, Callable[[Any, Any], object]] = {
        "recover_pending_attempts": recovery.reconcile_pending,
        "close_expired_attempts": recovery.close_stale,
        "sync_refunds": refund_executor.execute_pending_refunds,  # sends pending, queries processing
        "trade_bill": reconcile.run_daily,  # 10:30: yesterday's trade bill against the ledger
    }
    for job_id, func in jobs.items():
        register_job(app, job_id, _with_gateway(func, current_db, runtime.gateway))


def _with_gateway(
    func: Callable[[Any, Any], object], db: Callable[[], Any], gateway: Callable[[], Any]
) -> Callable[[], object]:
    def run() -> object:
        return func(db(), gateway())

    return run


def _in_process_wanted(forced: object, enabled: bool) -> bool:
    """In-process only for the development server (``flask run`` / ``make run``) or when asked.

    Never under gunicorn (exactly one ``flask --app app worker`` runs the jobs in production), never
    in other CLI commands, and only once with the reloader (in the serving child)."""
    if forced is not None:
        return bool(forced)
    if not enabled:
        return False
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.info_name != "run":
        return False
    from flask.helpers import get_debug_flag
    from werkzeug.serving import is_running_from_reloader

    reload = ctx.params.get("reload")
    reload = get_debug_flag() if reload is None else reload
    return not reload or is_running_from_reloader()


def start_in_process(app: Flask) -> None:
    from apscheduler.schedulers.background import BackgroundScheduler

    from erp_sync import scheduler

    background = BackgroundScheduler(timezone="Asia/Shanghai", daemon=True)
    scheduler.start(app, background)
    atexit.register(scheduler.stop, app)
    log.info("scheduler running in-process")
