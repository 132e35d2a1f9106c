"""``kill -9`` of a real ``flask --app app worker`` in the middle of a batch, then a restart: nothing
is lost, and what is sent again carries the same Idempotency-Key (the receiver dedupes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select, update

from db import utcnow
from erp_sync.outbox import DeliveryStatus, OutboxDelivery, OutboxEvent
from tests.fixtures.erp import ERP_SECRET
from tests.support.erp_receiver import wait_until

ROOT = Path(__file__).resolve().parents[2]


def start_worker(database_url: str, webhook_url: str, instance: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ERP_", "DATABASE_URL", "TEST_DATABASE"))}
    env.update(DATABASE_URL=database_url, ERP_WEBHOOK_URL=webhook_url, ERP_WEBHOOK_SECRET=ERP_SECRET,
               RENOPAY_INSTANCE_PATH=str(instance), PYTHONUNBUFFERED="1")
    flask = Path(sys.executable).with_name("flask")
    with log.open("ab") as out:
        return subprocess.Popen([str(flask), "--app", "app", "worker"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _erp_rows(db):
    with db.transaction() as s:
        return list(s.scalars(select(OutboxDelivery).where(OutboxDelivery.subscriber == "erp")))


def test_killed_worker_loses_nothing_and_resends_with_the_same_idempotency_key(
    db, build, database_url, sandbox_credentials, erp_receiver, tmp_path
):
    for i in range(150):
        bill_id = build.bill(2_000, phone=f"1370000{i:04d}")
        build.pay(build.attempt(bill_id, 1_000), 1_000)
    with db.transaction() as s:
        event_ids = set(s.scalars(select(OutboxEvent.id)))
    got = erp_receiver.receiver
    got.delay = 0.05  # slow enough that the kill lands mid-batch
    instance = Path(sandbox_credentials.directory).parent
    log = tmp_path / "worker.log"

    worker = start_worker(database_url, erp_receiver.url, instance, log)
    try:
        assert wait_until(lambda: len(got.processed) >= 40 and got.busy, timeout=60), log.read_text()
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
    sent_before_restart = got.total_requests
    leased = [r for r in _erp_rows(db) if r.lease_owner]
    assert leased, "the kill should leave a leased batch behind"
    with db.transaction() as s:  # the dead worker's lease runs out (instead of waiting 2 minutes)
        s.execute(update(OutboxDelivery).where(OutboxDelivery.lease_owner.is_not(None))
                  .values(lease_expires_at=utcnow()))

    worker = start_worker(database_url, erp_receiver.url, instance, log)
    try:
        delivered = {DeliveryStatus.delivered.value}
        done = wait_until(lambda: {r.status for r in _erp_rows(db)} == delivered, 90, 0.2)
        assert done, log.read_text()
    finally:
        worker.terminate()
        worker.wait(timeout=15)

    assert got.processed_ids == event_ids
    assert set(got.requests_by_key) == event_ids  # re-sends reuse the event id, never a new key
    assert got.total_requests > len(event_ids) and got.total_requests > sent_before_restart
    assert got.bad_signatures == 0
    assert got.truncated <= 1  # only the request the kill cut short
    assert all(seqs == [1, 2] for seqs in got.seqs_by_bill().values())
