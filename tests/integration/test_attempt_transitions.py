"""PaymentAttempt state machine: pending → succeeded | closed | failed, and closed → succeeded (a late
payment). Every other transition raises and changes nothing."""

from __future__ import annotations

import datetime as dt

import pytest

from db import utcnow
from payments.errors import IllegalTransition
from payments.models import AttemptStatus, Channel, PaymentAttempt

TRANSITIONS = {
    "succeed": (
        lambda a: a.succeed(),
        AttemptStatus.succeeded,
        {AttemptStatus.pending, AttemptStatus.closed},
    ),
    "close": (lambda a: a.close(utcnow(), "superseded"), AttemptStatus.closed, {AttemptStatus.pending}),
    "fail": (lambda a: a.fail("PARAM_ERROR"), AttemptStatus.failed, {AttemptStatus.pending}),
}
CASES = [(name, status) for name in TRANSITIONS for status in AttemptStatus]


def _attempt(status: AttemptStatus) -> PaymentAttempt:
    return PaymentAttempt(
        bill_id=1,
        out_trade_no="B2611-0001-abcd",
        channel=Channel.native,
        amount_fen=100,
        status=status,
        expires_at=utcnow() + dt.timedelta(hours=2),
    )


@pytest.mark.parametrize(("name", "status"), CASES, ids=[f"{n}-{s.value}" for n, s in CASES])
def test_attempt_transition_table(name: str, status: AttemptStatus) -> None:
    run, target, allowed = TRANSITIONS[name]
    attempt = _attempt(status)
    if status in allowed:
        run(attempt)
        assert attempt.status is target
    else:
        with pytest.raises(IllegalTransition):
            run(attempt)
        assert attempt.status is status
