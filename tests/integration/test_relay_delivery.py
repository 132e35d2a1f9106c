"""The relay delivers every event once, in per-bill order, to a signature-verifying receiver."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update

from db import utcnow
from erp_sync.outbox import DeliveryStatus, OutboxDelivery, OutboxEvent
from tests.fixtures.erp import make_relay


def _event_ids(db):
    with db.transaction() as s:
        return set(s.scalars(select(OutboxEvent.id)))


def _statuses(db):
    with db.transaction() as s:
        erp = select(OutboxDelivery).where(OutboxDelivery.subscriber == "erp")
        return {row.event_id: row.status for row in s.scalars(erp)}


def test_a_thousand_payments_across_a_hundred_bills_arrive_once_each_in_seq_order(db, build, erp_receiver):
    for i in range(100):
        bill_id = build.bill(10 * 1_000, phone=f"1380000{i:04d}")
        for _ in range(10):
            build.pay(build.attempt(bill_id, 1_000), 1_000)
    relay = make_relay(db, erp_receiver.url, batch_size=50)

    total = relay.drain()

    got = erp_receiver.receiver
    assert total.delivered == 1_100  # 100 bill.opened + 1,000 payment.succeeded
    assert got.processed_ids == _event_ids(db)
    assert set(got.requests_by_key.values()) == {1}
    assert got.bad_signatures == 0
    seqs = got.seqs_by_bill()
    assert len(seqs) == 100
    assert all(s == list(range(1, 12)) for s in seqs.values())
    assert set(_statuses(db).values()) == {DeliveryStatus.delivered.value}


def test_a_later_event_of_a_bill_waits_for_the_earlier_one_but_other_bills_flow(db, build, erp_receiver):
    slow_bill = build.bill(2_000, phone="13800000001")
    build.pay(build.attempt(slow_bill, 1_000), 1_000)
    other_bill = build.bill(2_000, phone="13800000002")
    with db.transaction() as s:  # the first event of slow_bill is not due for an hour
        first = s.scalars(
            select(OutboxEvent.id).where(OutboxEvent.bill_id == slow_bill, OutboxEvent.seq == 1)
        ).one()
        s.execute(update(OutboxDelivery).where(OutboxDelivery.event_id == first).values(
            next_attempt_at=utcnow() + dt.timedelta(hours=1)))

    make_relay(db, erp_receiver.url).drain()

    numbers = erp_receiver.receiver.seqs_by_bill()
    assert len(numbers) == 1 and list(numbers.values()) == [[1]]
    assert build.get(other_bill).number in numbers
    assert list(_statuses(db).values()).count(DeliveryStatus.pending.value) == 2


def test_a_dead_letter_does_not_block_the_later_events_of_its_bill(db, build, erp_receiver):
    bill_id = build.bill(2_000)
    build.pay(build.attempt(bill_id, 1_000), 1_000)
    with db.transaction() as s:
        s.execute(update(OutboxDelivery).where(OutboxDelivery.seq == 1).values(status=DeliveryStatus.dead))

    make_relay(db, erp_receiver.url).drain()

    assert list(erp_receiver.receiver.seqs_by_bill().values()) == [[2]]


def test_without_an_erp_url_deliveries_wait_and_status_says_so(db, build, database_url, sandbox_credentials):
    from pathlib import Path

    from app import create_app
    from erp_sync import relay_for
    from tests.fixtures.erp import erp_settings

    build.bill()
    instance = Path(sandbox_credentials.directory).parent
    app = create_app(erp_settings(database_url, instance, erp_webhook_url=""))

    assert "erp" not in relay_for(app).drain().by_subscriber
    result = app.test_cli_runner().invoke(args=["outbox", "status"], catch_exceptions=False)

    assert set(_statuses(db).values()) == {DeliveryStatus.pending.value}
    assert "NOT DELIVERING: ERP_WEBHOOK_URL is not configured" in result.output
    assert "[erp] pending 1" in result.output
