"""CLI: ``flask --app app outbox status|retry|replay|drain`` and ``flask --app app worker``."""

from __future__ import annotations

import datetime as dt
import logging
import re
import signal
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from db import CHINA_TZ, current_db, utcnow
from erp_sync import admin, scheduler
from erp_sync.relay import RelayStats
from erp_sync.subscribers import subscribers

_RELATIVE = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_when(text: str, now: dt.datetime) -> dt.datetime:
    """``24h``/``3d``/``30m`` ago, or an ISO 8601 time (without an offset: Asia/Shanghai)."""
    match = _RELATIVE.match(text.strip())
    if match:
        return now - dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: use e.g. 2026-11-26T10:00, 2026-11-26 or 24h") from None
    return value.replace(tzinfo=CHINA_TZ) if value.tzinfo is None else value


def _local(value: dt.datetime | None) -> str:
    return value.astimezone(CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _ago(value: dt.datetime | None, now: dt.datetime) -> str:
    if value is None:
        return "-"
    seconds = int((value - now).total_seconds())
    return f"in {seconds}s" if seconds >= 0 else f"{-seconds}s ago"


def register(app: Flask) -> None:
    app.cli.add_command(outbox_group)
    app.cli.add_command(worker_command)


outbox_group = AppGroup("outbox", help="The outbox of events to the ERP and notices: status, retry, replay.")


@outbox_group.command("status")
def status_command() -> None:
    """Counts by subscriber and status, oldest due, backoff and dead letters."""
    now = utcnow()
    with current_db().transaction() as session:
        report = admin.status(session, now)
    for name, sub in subscribers(current_app).items():
        report.setdefault(name, admin.SubscriberStatus(name)).not_ready = sub.not_ready_reason()
    if not report:
        click.echo("outbox is empty")
    for name, info in sorted(report.items()):
        counts = ", ".join(f"{k} {v}" for k, v in sorted(info.counts.items())) or "no deliveries"
        click.echo(f"[{name}] {counts}")
        if info.not_ready:
            click.echo(f"  NOT DELIVERING: {info.not_ready}")
        click.echo(
            f"  pending: due now {info.due_now}, in flight {info.in_flight}, backing off {info.backing_off}; "
            f"oldest due {_local(info.oldest_due_at)}, "
            f"oldest pending created {_local(info.oldest_pending_created_at)}, "
            f"next attempt {_ago(info.next_attempt_at, now)}"
        )
        for row in info.failing:
            click.echo(
                f"  #{row.id} {row.event_id} attempts {row.attempts} {row.status} "
                f"next {_ago(row.next_attempt_at, now)} failing since {_local(row.failing_since)}: "
                f"{row.last_error}"
            )
    for job_id, stats in sorted(scheduler.job_stats(current_app).snapshot().items()):
        error = (stats.last_error or "-")[:200]
        click.echo(f"job {job_id}: runs {stats.runs}, failures {stats.failures}, last error {error}")


@outbox_group.command("retry")
@click.argument("target", required=False)
@click.option("--dead", is_flag=True, help="Requeue every dead letter.")
@click.option("--subscriber", default=None, help="With --dead: only this subscriber's.")
def retry_command(target: str | None, dead: bool, subscriber: str | None) -> None:
    """Requeue delivery TARGET (a delivery id or an event id evt_…), or all dead letters."""
    if bool(target) == dead:
        raise click.UsageError("give either a delivery/event id or --dead")
    now = utcnow()
    with current_db().transaction() as session:
        try:
            if dead:
                changed = admin.retry_dead(session, now, subscriber)
            else:
                changed = admin.retry(session, target or "", now)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    click.echo(f"requeued {changed} deliver{'y' if changed == 1 else 'ies'}")


@outbox_group.command("replay")
@click.option("--since", "since_text", required=True, help="ISO time (Asia/Shanghai if no offset) or 24h/3d.")
@click.option("--until", "until_text", default=None)
@click.option("--subscriber", default="erp", show_default=True)
def replay_command(since_text: str, until_text: str | None, subscriber: str) -> None:
    """Send delivered events again (same Idempotency-Key; receivers dedupe)."""
    now = utcnow()
    since = parse_when(since_text, now)
    until = parse_when(until_text, now) if until_text else None
    with current_db().transaction() as session:
        changed = admin.replay(session, since, now, subscriber=subscriber, until=until)
    click.echo(f"replaying {changed} deliveries to {subscriber} created since {_local(since)}")


@outbox_group.command("drain")
@click.option("--max-seconds", type=float, default=None)
def drain_command(max_seconds: float | None) -> None:
    """Deliver everything that is due now, in the foreground, with progress."""
    from erp_sync import relay_for

    def progress(total: RelayStats) -> None:
        click.echo(
            f"delivered {total.delivered}, failed {total.failed}, dead {total.dead}, "
            f"batches {total.batches}"
        )

    total = relay_for(current_app).drain(max_seconds=max_seconds, progress=progress)
    click.echo(f"done: delivered {total.delivered}, failed {total.failed}, dead {total.dead}")


@click.command("worker")
@click.option("--list", "list_only", is_flag=True, help="Show the jobs and exit.")
@with_appcontext
def worker_command(list_only: bool) -> None:
    """Run the scheduled jobs (relay, payment recovery, trade bill, token refresh) in the foreground."""
    from apscheduler.schedulers.blocking import BlockingScheduler

    app: Any = current_app._get_current_object()  # type: ignore[attr-defined]
    specs = scheduler.jobs(app)
    for spec in specs.values():
        click.echo(f"job {spec.job_id}: {spec.trigger}")
    missing = [slot for slot in scheduler.SLOTS if slot not in specs]
    if missing:
        click.echo(f"slots not filled: {', '.join(missing)}")
    if list_only:
        return
    if not logging.getLogger().handlers:
        from observability import configure_logging

        configure_logging()  # JSON lines with masked openids and secrets, as the web workers log
    blocking = BlockingScheduler(timezone="Asia/Shanghai")

    def _stop(signum: int, _frame: object) -> None:
        click.echo(f"worker: signal {signum}, stopping after running jobs finish")
        blocking.shutdown(wait=False)

    signal.signal(signal.SIGTERM, _stop)
    click.echo("worker started", err=False)
    try:
        scheduler.start(app, blocking)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        app.extensions.pop(scheduler.SCHEDULER, None)
        click.echo("worker stopped")
