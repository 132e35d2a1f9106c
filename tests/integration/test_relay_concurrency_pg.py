"""Two relays (two workers) draining one outbox at once on PostgreSQL: no delivery is sent twice,
let alone concurrently — the receiver counts both."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from db import Database
from erp_sync.outbox import DeliveryStatus, OutboxDelivery
from tests.fixtures.domain import Builder
from tests.fixtures.erp import make_relay

pytestmark = pytest.mark.postgres


def test_two_workers_never_send_one_delivery_twice(pg_db, pg_database_url, erp_receiver):
    build = Builder(pg_db)
    for i in range(100):
        bill_id = build.bill(3_000, phone=f"1360000{i:04d}")
        for _ in range(2):
            build.pay(build.attempt(bill_id, 1_000), 1_000)
    erp_receiver.receiver.delay = 0.002
    databases = [Database.from_url(pg_database_url) for _ in range(2)]
    relays = [make_relay(d, erp_receiver.url, batch_size=20, concurrency=4) for d in databases]
    results = [None, None]
    start = threading.Barrier(2)

    def run(index: int) -> None:
        start.wait()
        results[index] = relays[index].drain()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for d in databases:
        d.dispose()

    got = erp_receiver.receiver
    assert got.overlaps == 0
    assert set(got.requests_by_key.values()) == {1}
    assert len(got.processed) == 300
    assert all(r is not None and r.delivered > 0 for r in results)  # both workers really worked
    assert sum(r.delivered for r in results) == 300
    assert all(seqs == [1, 2, 3] for seqs in got.seqs_by_bill().values())
    with pg_db.transaction() as s:
        statuses = set(s.scalars(select(OutboxDelivery.status).where(OutboxDelivery.subscriber == "erp")))
    assert statuses == {DeliveryStatus.delivered.value}
