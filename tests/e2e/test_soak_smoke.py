"""The soak harness (benchmarks/soak.py) works: a 30-second run of the production shape — PostgreSQL,
Redis, both stand-ins as processes, gunicorn with 2 workers, one worker, the ERP receiver — with
every fault kind of the reduced mix, and books that balance three ways."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.database import DEFAULT_PG_URL, pg_reachable, redis_reachable, require_or_skip

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("RENOPAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")


def _pg_server() -> str:
    configured = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL") or ""
    if configured.startswith("postgresql"):
        return configured
    return os.environ.get("RENOPAY_TEST_PG_URL", DEFAULT_PG_URL)


@pytest.mark.slow
def test_a_short_soak_of_the_production_shape_loses_and_doubles_nothing():
    server = _pg_server()
    for reason in (pg_reachable(server), redis_reachable(REDIS_URL)):
        if reason:  # CI starts both services; RENOPAY_REQUIRE_POSTGRES turns the skip into a failure
            require_or_skip(reason, "RENOPAY_REQUIRE_POSTGRES")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--minutes", "0.5", "--reduced",
         "--quiesce", "60", "--pg", server, "--redis", REDIS_URL],
        cwd=ROOT, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert "SOAK PASSED" in out
    for line in (
        "[PASS] every paid order at WeChat Pay has exactly one Payment",
        "[PASS] payments: WeChat Pay = RenoPay = ERP (count and sum)",
        "[PASS] refunds: WeChat Pay = RenoPay = ERP (count and sum)",
        "[PASS] token fetches at the minimum",
        "[PASS] /metrics erp outbox depth rises while the ERP is down",
        "[PASS] /metrics erp outbox depth falls back to 0 after the ERP returns",
        # /metrics counters added for issue 10: notification outcomes, deliveries by result, job runs
        'renopay_wechatpay_notifications_total{endpoint="notify",outcome="applied"}',
        'renopay_wechatpay_notifications_total{endpoint="notify",outcome="rejected"}',
        'renopay_outbox_deliveries_total{result="delivered",subscriber="erp"}',
        'renopay_outbox_deliveries_total{result="failed",subscriber="erp"}',
        'renopay_job_runs_total{job="relay",result="ok"}',
    ):
        assert line in out, out[-6000:]
    assert "kill -9 worker" in out and "kill -9 one gunicorn worker" in out
    assert "ERP down (connection refused)" in out
