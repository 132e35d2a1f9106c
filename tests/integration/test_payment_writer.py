"""payments/writer.py: the process that writes every gunicorn worker's payment notifications on a
SQLite file — what it applies, what a failing or malformed unit gets, and the worker's fall-back to
applying in-process when the writer is absent, stale, stalled or gone.

SQLite only, whatever database the suite runs on: each test migrates a database file of its own."""

from __future__ import annotations

import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select

from db import Database
from erp_sync.outbox import OutboxEvent
from migrations.runner import upgrade
from payments import writer
from payments.models import Bill, BillStatus, Payment
from payments.notifications import PaymentNotification, RawNotification
from payments.notify import apply_transaction_generally
from payments.wechatpay import Callback
from tests.fixtures.domain import APPID, MCHID, Builder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[tuple[str, Database]]:
    url = f"sqlite:///{tmp_path / 'renopay.sqlite3'}"
    upgrade(url)
    database = Database.from_url(url)
    yield url, database
    database.dispose()


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> writer._Client:
    """A fresh client per test (its retry-after state is per process), with short timeouts."""
    fresh = writer._Client()
    monkeypatch.setattr(writer, "_CLIENT", fresh)
    monkeypatch.setattr(writer, "REPLY_TIMEOUT", 1.0)
    return fresh


@pytest.fixture
def server(sqlite_file: tuple[str, Database]) -> Iterator[writer.WriterServer]:
    url, _ = sqlite_file
    running = writer.WriterServer(url)
    running.bind()
    thread = threading.Thread(target=running.serve, daemon=True)
    thread.start()
    yield running
    running.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()


def resource(out_trade_no: str, amount_fen: int, **changes: Any) -> dict[str, Any]:
    data = {
        "appid": APPID,
        "mchid": MCHID,
        "out_trade_no": out_trade_no,
        "transaction_id": "4200" + secrets.token_hex(12),
        "trade_type": "NATIVE",
        "trade_state": "SUCCESS",
        "success_time": "2026-11-26T10:00:00+08:00",
        "payer": {"openid": "o_payer"},
        "amount": {"total": amount_fen, "payer_total": amount_fen, "currency": "CNY"},
    }
    data.update(changes)
    return data


def raw_of(data: dict[str, Any]) -> RawNotification:
    event_id = "EV-" + secrets.token_hex(8)
    body = json.dumps({"id": event_id, "resource": {"ciphertext": "…"}})
    return RawNotification(event_id, "TRANSACTION.SUCCESS", "payment", data["out_trade_no"], body, data)


def pay_one_bill_through_the_writer(database: Database, amount_fen: int) -> str | None:
    """A new bill paid in full by one notification sent to the writer; the writer's answer."""
    build = Builder(database)
    raw = raw_of(resource(build.attempt(build.bill(amount_fen)), amount_fen))
    return writer.apply_via_writer(database.file or "", raw, APPID, MCHID)


def counts(database: Database) -> tuple[int, int, int]:
    with database.transaction() as s:
        return (
            s.scalar(select(func.count()).select_from(Payment)) or 0,
            s.scalar(
                select(func.count()).select_from(OutboxEvent).where(OutboxEvent.topic == "payment.succeeded")
            )
            or 0,
            s.scalar(select(func.count()).select_from(PaymentNotification)) or 0,
        )


def test_concurrent_notifications_are_applied_by_the_writer_once_each(
    sqlite_file: tuple[str, Database], server: writer.WriterServer, client: writer._Client
) -> None:
    _, database = sqlite_file
    build = Builder(database)
    orders = [build.attempt(build.bill(100_000 + i, phone=f"139{i:08d}")) for i in range(16)]
    raws = [raw_of(resource(order, 100_000 + i)) for i, order in enumerate(orders)]
    outcomes: list[str | None] = [None] * len(raws)

    def send(i: int) -> None:
        outcomes[i] = writer.apply_via_writer(database.file or "", raws[i], APPID, MCHID)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(raws))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == ["applied"] * 16
    assert counts(database) == (16, 16, 16)
    assert server.units == 16 and 1 <= server.batches <= 16
    again = writer.apply_via_writer(database.file or "", raws[3], APPID, MCHID)  # WeChat redelivers
    assert again == "duplicate" and counts(database) == (16, 16, 16)
    with database.transaction() as s:
        row = s.execute(
            select(PaymentNotification).where(PaymentNotification.event_id == raws[3].event_id)
        ).scalar_one()
        assert (row.outcome, row.deliveries) == ("applied", 2)
        bill = s.execute(select(Bill).where(Bill.paid_fen == 100_003)).scalar_one()
        assert bill.status is BillStatus.paid


def test_a_failing_unit_fails_alone_and_a_malformed_message_drops_only_its_connection(
    sqlite_file: tuple[str, Database], server: writer.WriterServer, client: writer._Client
) -> None:
    _, database = sqlite_file
    build = Builder(database)
    good = build.attempt(build.bill(200_000))
    broken = raw_of(resource(build.attempt(build.bill(300_000, phone="13900000001")), 300_000, amount={}))
    with pytest.raises(writer.WriterUnitFailed, match="KeyError"):
        writer.apply_via_writer(database.file or "", broken, APPID, MCHID)
    with socket.socket(socket.AF_UNIX) as rogue:  # garbage JSON in a valid frame, then an oversized frame
        rogue.connect(server.path)
        rogue.sendall(struct.pack("!I", 5) + b"nope!")
        assert rogue.recv(64) == b""  # dropped
    with socket.socket(socket.AF_UNIX) as rogue:
        rogue.connect(server.path)
        rogue.sendall(struct.pack("!I", writer.MAX_MESSAGE + 1))
        assert rogue.recv(64) == b""
    with socket.socket(socket.AF_UNIX) as odd:  # valid JSON that is not a unit: answered with an error
        odd.connect(server.path)
        odd.sendall(writer._frame({"raw": {"event_id": "x"}}))
        size = struct.unpack("!I", odd.recv(4))[0]
        assert "malformed" in json.loads(odd.recv(size))["error"]
    fine = raw_of(resource(good, 200_000))
    assert writer.apply_via_writer(database.file or "", fine, APPID, MCHID) == "applied"
    assert counts(database)[0] == 1


def test_a_worker_that_gave_up_before_its_answer_leaves_the_others_answered(
    sqlite_file: tuple[str, Database], server: writer.WriterServer, client: writer._Client
) -> None:
    """The syncer's thread answers while the loop reads and drops connections: an answer for a
    connection that is gone is skipped, and the writer goes on (the unit itself was committed)."""
    _, database = sqlite_file
    build = Builder(database)
    orders = [build.attempt(build.bill(400_000 + i, phone=f"137{i:08d}")) for i in range(6)]
    for i, order in enumerate(orders[:5]):  # five workers that time out at once and hang up
        with socket.socket(socket.AF_UNIX) as impatient:
            impatient.connect(server.path)
            impatient.sendall(writer._frame({"raw": vars(raw_of(resource(order, 400_000 + i))),
                                             "appid": APPID, "mchid": MCHID}))
    deadline = time.monotonic() + 5
    while server.units < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.units == 5 and counts(database)[0] == 5
    last = raw_of(resource(orders[5], 400_005))
    assert writer.apply_via_writer(database.file or "", last, APPID, MCHID) == "applied"
    assert counts(database) == (6, 6, 6)


def test_without_a_writer_the_worker_is_told_to_apply_in_process(
    sqlite_file: tuple[str, Database], client: writer._Client, tmp_path: Path
) -> None:
    _, database = sqlite_file
    raw = raw_of(resource("B2611-0001-00000000", 100))
    assert writer.apply_via_writer(database.file or "", raw, APPID, MCHID) is None  # no socket at all
    stale = socket.socket(socket.AF_UNIX)  # a socket file nobody listens on (a writer that was killed)
    stale.bind(writer.socket_path(database.file or ""))
    stale.close()
    assert writer.apply_via_writer(database.file or "", raw, APPID, MCHID) is None
    assert client._down_until > time.monotonic()  # and the next ones go in-process without trying


def test_a_stalled_writer_is_given_up_and_the_endpoint_applies_in_process(
    sqlite_file: tuple[str, Database], client: writer._Client
) -> None:
    _, database = sqlite_file
    build = Builder(database)
    order = build.attempt(build.bill(500_000))
    silent = socket.socket(socket.AF_UNIX)  # accepts (the kernel's backlog) and never answers
    silent.bind(writer.socket_path(database.file or ""))
    silent.listen(8)
    try:
        data = resource(order, 500_000)
        callback = Callback("EV-" + secrets.token_hex(6), "TRANSACTION.SUCCESS", data)
        gw = SimpleNamespace(appid=APPID, mchid=MCHID)
        started = time.monotonic()
        outcome = apply_transaction_generally(database, gw, callback, json.dumps({"id": callback.event_id}))
        waited = time.monotonic() - started
        assert outcome == "applied" and writer.REPLY_TIMEOUT * 0.9 <= waited < writer.REPLY_TIMEOUT + 2
    finally:
        silent.close()
    assert counts(database) == (1, 1, 1)


def test_the_writer_process_starts_with_gunicorns_master_and_stops_with_it(
    sqlite_file: tuple[str, Database], client: writer._Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, database = sqlite_file
    assert writer.start_writer("postgresql://postgres@127.0.0.1/test") is None  # PostgreSQL: none
    monkeypatch.setenv("RENOPAY_PAYMENT_WRITER", "0")
    assert writer.start_writer(url) is None  # turned off
    monkeypatch.delenv("RENOPAY_PAYMENT_WRITER")
    process = writer.start_writer(url)
    assert process is not None
    try:
        assert os.stat(process.path).st_mode & 0o077 == 0  # the user's own socket
        assert pay_one_bill_through_the_writer(database, 700_000) == "applied"
    finally:
        process.stop()
    assert process.process.returncode == 0 and not os.path.exists(process.path)
    assert counts(database) == (1, 1, 1)


def test_a_writer_that_dies_is_started_again(
    sqlite_file: tuple[str, Database], client: writer._Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed (OOM, a crash): the workers go in-process at once, and the master's watcher starts a
    new writer, which they find again once their RETRY_AFTER is over. Stopping ends the watching."""
    url, database = sqlite_file
    monkeypatch.setattr(writer, "RESTART_AFTER", (0.2, 0.4))
    process = writer.start_writer(url)
    assert process is not None
    first = process.process
    try:
        first.kill()
        deadline = time.monotonic() + 20
        while process.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.restarts == 1 and process.process.pid != first.pid
        assert process.process.poll() is None
        assert pay_one_bill_through_the_writer(database, 800_000) == "applied"
    finally:
        process.stop()
    assert process.process.returncode == 0 and not os.path.exists(process.path)
    time.sleep(0.6)  # longer than the backoff: a stopped writer is not started again
    assert process.restarts == 1 and not os.path.exists(process.path)
    assert counts(database) == (1, 1, 1)


def test_a_writer_whose_master_is_gone_stops_by_itself(sqlite_file: tuple[str, Database]) -> None:
    url, database = sqlite_file
    not_my_parent = os.getpid() + 1_000_000
    process = subprocess.Popen([sys.executable, "-m", "payments.writer", url, str(not_my_parent)], cwd=ROOT)
    assert process.wait(timeout=20) == 0
    assert not os.path.exists(writer.socket_path(database.file or ""))


def test_a_socket_path_too_long_for_the_kernel_goes_to_a_private_directory(tmp_path: Path) -> None:
    database = str(tmp_path / ("d" * 120) / "renopay.sqlite3")
    path = writer.socket_path(database)
    assert len(path.encode()) <= 100 and path == writer.socket_path(database)
    assert path != writer.socket_path(database + "2")
    writer._private_directory(path)
    assert os.stat(os.path.dirname(path)).st_mode & 0o077 == 0


def test_nobody_is_told_done_when_the_wal_cannot_be_synced(
    sqlite_file: tuple[str, Database], server: writer.WriterServer, client: writer._Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, database = sqlite_file
    build = Builder(database)
    order = build.attempt(build.bill(900_000))

    def disk_gone() -> None:
        raise OSError(5, "Input/output error")

    working = server.db.sync_wal
    monkeypatch.setattr(server.db, "sync_wal", disk_gone)
    raw = raw_of(resource(order, 900_000))
    with pytest.raises(writer.WriterUnitFailed, match="not synced"):
        writer.apply_via_writer(database.file or "", raw, APPID, MCHID)
    monkeypatch.setattr(server.db, "sync_wal", working)  # the disk is back: WeChat's retry finds the payment
    assert writer.apply_via_writer(database.file or "", raw, APPID, MCHID) == "duplicate"
    assert counts(database) == (1, 1, 1)
