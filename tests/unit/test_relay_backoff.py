"""Backoff of the relay: exponential, jittered, capped at an hour — long enough to span 3 days."""

from __future__ import annotations

import datetime as dt

from erp_sync.relay import RelayPolicy, backoff_seconds

POLICY = RelayPolicy(base_delay=2.0, max_delay=3600.0)


def test_backoff_doubles_from_seconds_and_stays_within_jitter_bounds():
    for failures in range(1, 8):
        ceiling = 2.0 * 2 ** (failures - 1)
        assert backoff_seconds(failures, POLICY, rand=lambda: 0.0) == ceiling / 2
        assert backoff_seconds(failures, POLICY, rand=lambda: 1.0) == ceiling


def test_backoff_never_exceeds_one_hour_however_many_failures():
    assert backoff_seconds(10_000, POLICY, rand=lambda: 1.0) == 3600.0
    assert backoff_seconds(40, POLICY, rand=lambda: 0.0) == 1800.0


def test_three_days_of_failures_take_dozens_of_attempts_not_thousands():
    elapsed, attempts = 0.0, 0
    while elapsed < dt.timedelta(days=3).total_seconds():
        attempts += 1
        elapsed += backoff_seconds(attempts, POLICY, rand=lambda: 0.5)
    assert 60 < attempts < 200
