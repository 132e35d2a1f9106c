"""The scheduler's jobs: each runs in an app context, failures are counted (not fatal), and
``flask --app app worker --list`` shows every job and the slots still empty."""

from __future__ import annotations

from flask import current_app

from erp_sync import register_job, scheduler


def test_a_failing_job_is_counted_and_the_next_run_still_happens(erp_app):
    calls = []

    def flaky() -> None:
        calls.append(current_app.name)  # proves the app context
        if len(calls) == 1:
            raise RuntimeError("WeChat Pay unreachable")

    register_job(erp_app, "trade_bill", flaky)

    assert scheduler.run_job(erp_app, "trade_bill") is False
    assert scheduler.run_job(erp_app, "trade_bill") is True
    stats = scheduler.job_stats(erp_app).snapshot()["trade_bill"]
    assert (stats.runs, stats.failures) == (2, 1)
    assert stats.last_error == "RuntimeError: WeChat Pay unreachable"
    assert calls == [erp_app.name, erp_app.name]


def test_worker_list_shows_every_job_slot_filled_with_its_trigger(erp_app):
    result = erp_app.test_cli_runner().invoke(args=["worker", "--list"], catch_exceptions=False)

    assert "job relay: interval[0:00:02]" in result.output
    assert "job recover_pending_attempts: interval[0:01:00]" in result.output
    for slot in scheduler.SLOTS:  # every job slot is filled by its feature
        assert f"job {slot}: " in result.output
    assert "slots not filled:" not in result.output


def test_a_job_registered_after_the_scheduler_started_is_scheduled_live(erp_app):
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler.start(erp_app, BackgroundScheduler(timezone="Asia/Shanghai"), paused=True)
    try:
        register_job(erp_app, "token_refresh", lambda: None)
        live = erp_app.extensions[scheduler.SCHEDULER].get_job("token_refresh")
        assert live is not None and live.max_instances == 1 and live.coalesce is True
    finally:
        scheduler.stop(erp_app)


def test_the_scheduler_does_not_start_in_process_outside_the_development_server(erp_app):
    assert scheduler.SCHEDULER not in erp_app.extensions
