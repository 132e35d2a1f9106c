"""ERP relay throughput: 10,000 outbox events to a local signature-verifying receiver.

Baseline (same run): a bare loop posting the same signed bodies over one keep-alive session.
Reported: events/s of each, their ratio (goal ≥ 0.5) and the relay's time to drain.

    .venv/bin/python benchmarks/erp_sync.py [--events 10000] [--database-url postgresql://...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import select

from db import Database
from erp_sync.outbox import OutboxEvent, Topic, emit
from erp_sync.relay import Relay, RelayPolicy
from erp_sync.webhook import ErpWebhook, encode_body
from migrations.runner import upgrade
from payments import services
from payments.models import Bill, BillSource
from tests.support.erp_receiver import Receiver
from tests.support.servers import start_server

SECRET = "bench-secret-0123456789"
EVENTS_PER_BILL = 10


def seed(db: Database, events: int) -> None:
    """events/10 bills, each opened through the services, then 9 more events of the bill."""
    bills = events // EVENTS_PER_BILL
    for start in range(0, bills, 100):
        with db.transaction() as s:
            for i in range(start, min(start + 100, bills)):
                customer = services.find_or_create_customer(s, name="压测", phone=f"135{i:08d}")
                bill = services.issue_bill(
                    s, customer=customer, amount_fen=100_000, title="压测", stage="其他",
                    source=BillSource.chat, max_fen=10**9, open_now=True,
                )
                for n in range(EVENTS_PER_BILL - 1):
                    emit(s, Topic.payment_recorded_offline, bill=bill, data={"n": n, "title": bill.title})


def baseline(db: Database, url: str) -> float:
    hook = ErpWebhook(url, (SECRET,))
    with db.transaction() as s:
        payloads = [dict(p) for p in s.scalars(select(OutboxEvent.payload).order_by(OutboxEvent.created_at))]
    session = requests.Session()
    started = time.perf_counter()
    for payload in payloads:
        body = encode_body(payload)
        response = session.post(url, data=body, headers=hook.headers_for(payload, body), timeout=(3, 10))
        response.raise_for_status()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--concurrency", type=int, default=RelayPolicy.concurrency)
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/bench.sqlite3"
    if args.database_url and "sqlite" not in url:
        from tests.fixtures.database import create_pg_database

        url = create_pg_database(url)
    upgrade(url)
    db = Database.from_url(url)
    seed(db, args.events)
    with db.transaction() as s:
        assert s.query(Bill).count() == args.events // EVENTS_PER_BILL

    base_rx, relay_rx = Receiver(secrets=(SECRET,)), Receiver(secrets=(SECRET,))
    base_srv, relay_srv = start_server(base_rx), start_server(relay_rx)
    base_seconds = baseline(db, base_srv.url + "/hook")

    relay = Relay(db, {"erp": ErpWebhook(relay_srv.url + "/hook", (SECRET,))},
                  policy=RelayPolicy(concurrency=args.concurrency))
    started = time.perf_counter()
    total = relay.drain()
    drain_seconds = time.perf_counter() - started
    base_srv.stop()
    relay_srv.stop()

    assert total.delivered == args.events and len(relay_rx.processed) == args.events
    assert relay_rx.bad_signatures == 0 and base_rx.bad_signatures == 0
    base_rate, relay_rate = args.events / base_seconds, args.events / drain_seconds
    print(f"database           {db.engine.dialect.name}")
    print(f"events             {args.events} ({args.events // EVENTS_PER_BILL} bills)")
    print(f"bare HTTP loop     {base_rate:8.0f} events/s ({base_seconds:.2f} s)")
    print(f"relay (conc. {args.concurrency})    {relay_rate:8.0f} events/s, drained in {drain_seconds:.2f} s "
          f"({total.batches} batches)")
    print(f"ratio relay/bare   {relay_rate / base_rate:8.2f}  (goal >= 0.5)")
    db.dispose()


if __name__ == "__main__":
    main()
