"""The ERP down for a while (connection refused, then 500, then timeouts): nothing is lost, the backoff
shows in ``outbox status``, and after 3 days of failures a delivery is dead-lettered, not dropped.
Time is a clock the test moves, so days pass in milliseconds."""

from __future__ import annotations

import socket

from sqlalchemy import select

from erp_sync import admin
from erp_sync.outbox import DeliveryStatus, OutboxDelivery, OutboxEvent
from erp_sync.relay import Claimed, RelayStats
from tests.fixtures.erp import make_relay
from tests.support.erp_receiver import wait_until

_PATIENT = (5.0, 10.0)  # connect, read: seconds


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/erp/webhook"


def _deliveries(db):
    with db.transaction() as s:
        erp = select(OutboxDelivery).where(OutboxDelivery.subscriber == "erp")
        return list(s.scalars(erp.order_by(OutboxDelivery.id)))


def _event_ids(db):
    with db.transaction() as s:
        return set(s.scalars(select(OutboxEvent.id)))


def _two_events_on_each_of(build, bills: int) -> None:
    for i in range(bills):
        bill_id = build.bill(2_000, phone=f"1390000{i:04d}")
        build.pay(build.attempt(bill_id, 1_000), 1_000)


def _status(erp_app) -> str:
    result = erp_app.test_cli_runner().invoke(args=["outbox", "status"], catch_exceptions=False)
    return result.output


def test_refused_then_500_then_timeouts_lose_nothing_and_the_backoff_is_visible(
    db, build, erp_app, erp_receiver, clock
):
    _two_events_on_each_of(build, 5)
    clock.sync()
    # base 60 s: the status below reads the real clock, so the first backoff must outlast the test's pace
    relay = make_relay(db, _closed_port_url(), clock=clock, timeout=_PATIENT, base_delay=60.0)
    hook = relay.subscribers["erp"]

    relay.run_once()  # connection refused; only the first event of each bill is tried (order)
    status = _status(erp_app)
    assert "backing off 5" in status and "connection failed" in status
    assert "[erp] pending 10" in status

    hook.url = erp_receiver.url  # type: ignore[attr-defined]
    erp_receiver.receiver.mode = "error"
    clock.advance(minutes=2)
    relay.run_once()
    assert {d.last_error for d in _deliveries(db) if d.last_error} == {"HTTP 500: no"}

    erp_receiver.receiver.mode, erp_receiver.receiver.delay = "ok", 2.0  # far slower than the 0.3 s timeout
    hook.timeout = (2.0, 0.3)  # type: ignore[attr-defined]
    clock.advance(minutes=4)
    relay.run_once()
    assert {d.last_error for d in _deliveries(db) if d.last_error} == {"timeout (ReadTimeout)"}
    assert max(d.next_attempt_at for d in _deliveries(db)) > clock.now
    assert [d.attempts for d in _deliveries(db) if d.seq == 1] == [3] * 5

    # The ERP is back. Only the timeout stage uses a short timeout: on a busy CI machine an ordinary
    # answer can take longer than 0.3 s, and a spurious timeout here would leave a delivery backing off.
    erp_receiver.receiver.delay = 0.0
    hook.timeout = _PATIENT  # type: ignore[attr-defined]
    assert wait_until(lambda: not erp_receiver.receiver.busy, timeout=10)  # the slow answers are done
    clock.advance(hours=1)
    relay.drain()

    assert {(d.status, d.last_error) for d in _deliveries(db)} == {(DeliveryStatus.delivered.value, None)}
    assert erp_receiver.receiver.processed_ids == _event_ids(db)
    assert all(seqs == [1, 2] for seqs in erp_receiver.receiver.seqs_by_bill().values())


def test_a_delivery_failing_for_three_days_is_dead_lettered_and_retry_dead_sends_it(
    db, build, erp_app, erp_receiver, clock
):
    build.bill()
    clock.sync()
    relay = make_relay(db, _closed_port_url(), clock=clock)
    relay.run_once()
    clock.advance(days=2, hours=23)
    relay.run_once()
    assert _deliveries(db)[0].status == DeliveryStatus.pending.value

    clock.advance(hours=1, seconds=1)
    relay.run_once()
    [dead] = _deliveries(db)
    assert dead.status == DeliveryStatus.dead.value and "retry window exhausted" in (dead.last_error or "")
    assert "dead 1" in _status(erp_app)

    retried = erp_app.test_cli_runner().invoke(args=["outbox", "retry", "--dead"], catch_exceptions=False)
    assert "requeued 1 delivery" in retried.output
    relay.subscribers["erp"].url = erp_receiver.url  # type: ignore[attr-defined]
    relay.drain()
    assert [d.status for d in _deliveries(db)] == [DeliveryStatus.delivered.value]
    assert len(erp_receiver.receiver.processed) == 1


def test_a_leased_delivery_is_not_claimed_again_until_its_lease_expires(db, build, erp_receiver, clock):
    build.bill()
    clock.sync()
    first = make_relay(db, erp_receiver.url, clock=clock)
    second = make_relay(db, erp_receiver.url, clock=clock)

    claimed = first.claim("erp")
    assert len(claimed) == 1
    assert second.claim("erp") == []

    clock.advance(seconds=first.policy.lease.total_seconds() + 1)  # the first worker is presumed dead
    taken_over = second.claim("erp")
    assert [c.event_id for c in taken_over] == [claimed[0].event_id]


def test_a_worker_whose_lease_was_taken_over_cannot_overwrite_the_newer_outcome(
    db, build, erp_receiver, clock
):
    build.bill()
    clock.sync()
    stale = make_relay(db, erp_receiver.url, clock=clock)
    fresh = make_relay(db, erp_receiver.url, clock=clock)
    [old_claim] = stale.claim("erp")
    clock.advance(seconds=stale.policy.lease.total_seconds() + 1)
    [new_claim] = fresh.claim("erp")

    fresh.mark([_sent(new_claim)], RelayStats())
    from erp_sync.subscribers import RetryableError

    stale.mark([_sent(old_claim, RetryableError("HTTP 502: late"))], RelayStats())

    [row] = _deliveries(db)
    assert row.status == DeliveryStatus.delivered.value and row.last_error is None


def _sent(item: Claimed, error=None) -> Claimed:
    item.sent, item.error = True, error
    return item


def test_replay_sends_delivered_events_again_with_the_same_idempotency_key(db, build, erp_app, erp_receiver):
    _two_events_on_each_of(build, 3)
    relay = make_relay(db, erp_receiver.url)
    relay.drain()

    runner = erp_app.test_cli_runner()
    replayed = runner.invoke(args=["outbox", "replay", "--since", "1h"], catch_exceptions=False)
    assert "replaying 6 deliveries" in replayed.output
    relay.drain()

    got = erp_receiver.receiver
    assert set(got.requests_by_key) == _event_ids(db)
    assert set(got.requests_by_key.values()) == {2}
    assert len(got.processed) == 6


def test_retry_of_one_event_requeues_only_that_event(db, build, erp_receiver):
    _two_events_on_each_of(build, 2)
    make_relay(db, erp_receiver.url).drain()
    target = _deliveries(db)[0].event_id

    with db.transaction() as s:
        from db import utcnow

        assert admin.retry(s, target, utcnow()) == 1
    make_relay(db, erp_receiver.url).drain()

    assert erp_receiver.receiver.requests_by_key[target] == 2
    assert erp_receiver.receiver.total_requests == 5
