"""The SQLite writer lock (db.WriterLock): one writer at a time across threads and processes, re-entrant
within a thread, and fresh in a forked child."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from pathlib import Path
from typing import Any

from db import Database, WriterLock


def _hold_in_child(path: str, held: Any, release: Any) -> None:
    lock = WriterLock(path)
    with lock.held():
        held.set()
        release.wait(10)


def _acquired_within(lock: WriterLock, seconds: float) -> bool:
    got = threading.Event()

    def take() -> None:
        with lock.held():
            got.set()

    threading.Thread(target=take, daemon=True).start()
    return got.wait(seconds)


def test_another_process_waits_until_the_holder_releases(tmp_path: Path) -> None:
    path = str(tmp_path / "db.sqlite3-writer.lock")
    ctx = mp.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_in_child, args=(path, held, release))
    child.start()
    try:
        assert held.wait(30)
        lock = WriterLock(path)
        assert not _acquired_within(lock, 0.3)  # the child holds it
        release.set()
        child.join(10)
        assert _acquired_within(lock, 5)
    finally:
        release.set()
        child.join(10)


def test_threads_take_turns(tmp_path: Path) -> None:
    lock = WriterLock(str(tmp_path / "x-writer.lock"))
    inside, overlaps, counter = [0], [0], [0]

    def work() -> None:
        for _ in range(20):
            with lock.held():
                inside[0] += 1
                overlaps[0] += inside[0] > 1
                value = counter[0]
                time.sleep(0.0005)
                counter[0] = value + 1
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert (counter[0], overlaps[0]) == (80, 0)


def test_a_nested_unit_of_work_in_the_same_thread_keeps_the_outer_lock(tmp_path: Path) -> None:
    lock = WriterLock(str(tmp_path / "x-writer.lock"))
    with lock.held():
        with lock.held():
            pass
        assert not _acquired_within(lock, 0.2)  # still held by the outer block
    assert _acquired_within(lock, 5)


def test_a_sqlite_database_serialises_its_units_of_work_with_it(tmp_path: Path) -> None:
    db = Database.from_url(f"sqlite:///{tmp_path / 'app.sqlite3'}")
    try:
        assert db.writer_lock is not None
        assert db.writer_lock.path == str(tmp_path / "app.sqlite3-writer.lock")
        with db.transaction():
            assert not _acquired_within(db.writer_lock, 0.2)
            with db.read():  # readers never queue for it
                pass
        assert _acquired_within(db.writer_lock, 5)
    finally:
        db.dispose()
    memory = Database.from_url("sqlite://")
    assert memory.writer_lock is None
    memory.dispose()
