"""db.Prepared (statements run on the DBAPI cursor) against Connection.execute, and db.GroupCommit
(units that arrive together share one SQLite transaction; a failing unit fails alone)."""

from __future__ import annotations

import datetime as dt
import enum
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    Enum,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db import Database, GroupCommit, Prepared, UTCDateTime, loaded_copy
from migrations.runner import upgrade
from tests.fixtures.database import with_tables


class Colour(enum.StrEnum):
    red = "red"
    blue = "blue"


META = MetaData()
THINGS = Table(
    "prepared_things",
    META,
    Column("id", Integer, primary_key=True),
    Column("name", String(20), nullable=False),
    Column("colour", Enum(Colour, native_enum=False, length=8), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("day", Date),
    Column("flag", Boolean, nullable=False),
    Column("data", JSON),
)
COLUMNS = ("name", "colour", "at", "day", "flag", "data")
AT = dt.datetime(2026, 11, 26, 23, 59, 58, 123456, tzinfo=dt.UTC)
ROW = {"name": "甲", "colour": Colour.blue, "at": AT, "day": dt.date(2026, 12, 1), "flag": True,
       "data": {"金额": 3_800_000, "items": [1, None]}}


@pytest.fixture
def things(db: Database) -> Iterator[Database]:
    yield from with_tables(db, META)


def test_prepared_writes_and_reads_what_connection_execute_does(things: Database) -> None:
    inserted = Prepared(insert(THINGS).returning(THINGS.c.id), columns=COLUMNS)
    by_name = Prepared(select(THINGS).where(THINGS.c.name == bindparam("wanted")).order_by(THINGS.c.id))
    with things.transaction() as s:
        conn = s.connection()
        fast_id = inserted.scalar(conn, ROW)
        slow_id = conn.execute(insert(THINGS).returning(THINGS.c.id), ROW).scalar_one()
        assert fast_id != slow_id
        fast, slow = by_name.all(conn, {"wanted": "甲"})
        expected = conn.execute(select(THINGS).where(THINGS.c.id == fast_id)).one()
        # the raw stored form is the same too (SQLite keeps datetimes and enums as text)
        raw = conn.execute(text("SELECT CAST(at AS TEXT), colour, CAST(data AS TEXT) FROM prepared_things "
                                "ORDER BY id")).all()
    assert raw[0] == raw[1]
    assert fast._asdict() == {**expected._asdict()} and fast.colour is Colour.blue and fast.at == AT
    assert slow._replace(id=fast.id) == fast
    assert fast.data == ROW["data"] and fast.flag is True and fast.day == dt.date(2026, 12, 1)


def test_prepared_update_rowcount_many_and_missing_parameters(things: Database) -> None:
    many = Prepared(insert(THINGS), columns=COLUMNS)
    recolour = Prepared(
        update(THINGS).where(THINGS.c.colour == bindparam("old")).values(colour=bindparam("new"))
    )
    with things.transaction() as s:
        conn = s.connection()
        many.many(conn, [ROW, {**ROW, "name": "乙", "colour": Colour.red, "data": None, "day": None}])
        assert recolour.rowcount(conn, {"old": Colour.blue, "new": Colour.red}) == 1
        assert recolour.rowcount(conn, {"old": Colour.blue, "new": Colour.red}) == 0
        query = select(THINGS.c.name, THINGS.c.colour, THINGS.c.data).order_by(THINGS.c.id)
        colours = conn.execute(query).all()
        with pytest.raises(KeyError, match="new"):
            recolour.rowcount(conn, {"old": Colour.red})
    assert [tuple(r) for r in colours] == [("甲", Colour.red, ROW["data"]), ("乙", Colour.red, None)]


def test_prepared_passes_each_parameter_once(things: Database) -> None:
    """Literal values become anonymous parameters, which SQLAlchemy's compiled form lists under an
    internal key as well as under the name in the SQL: only the rendered names go to the driver."""
    anonymous = Prepared(
        update(THINGS).where(THINGS.c.colour == Colour.blue, THINGS.c.name != "丙")
        .values(colour=Colour.red, name=bindparam("new_name"))
    )
    with things.transaction() as s:
        conn = s.connection()
        Prepared(insert(THINGS), columns=COLUMNS).many(conn, [ROW, {**ROW, "name": "丙"}])
        assert anonymous.rowcount(conn, {"new_name": "丁"}) == 1
        compiled = anonymous._compiled(conn.dialect)
        names = [name for name, *_ in compiled.binds]
        rendered = conn.execute(select(THINGS.c.name, THINGS.c.colour).order_by(THINGS.c.id)).all()
    assert len(names) == len(set(names)) == 4  # colour, name (set); colour, name (compared)
    if not compiled.positional:  # PostgreSQL: each name appears in the SQL as a placeholder
        assert all(f"%({name})s" in compiled.sql for name in names)
    assert [tuple(r) for r in rendered] == [("丁", Colour.red), ("丙", Colour.blue)]


def test_prepared_raises_sqlalchemy_errors_like_connection_execute(things: Database) -> None:
    inserted = Prepared(insert(THINGS), columns=("id", *COLUMNS))
    with pytest.raises(IntegrityError):  # the same primary key twice
        with things.transaction() as s:
            inserted.rowcount(s.connection(), {**ROW, "id": 1})
            inserted.rowcount(s.connection(), {**ROW, "id": 1})
    with pytest.raises(IntegrityError):
        with things.transaction() as s:
            inserted.many(s.connection(), [{**ROW, "id": 2}, {**ROW, "id": 2}])
    with things.read() as s:
        assert s.execute(select(func.count()).select_from(THINGS)).scalar_one() == 0


def test_prepared_refuses_what_it_cannot_run_faithfully(things: Database) -> None:
    with things.transaction() as s:
        conn = s.connection()
        with pytest.raises(ValueError, match="expanding"):
            Prepared(select(THINGS).where(THINGS.c.name.in_(["甲", "乙"]))).all(conn, {})
        defaulted = Table("prepared_defaulted", MetaData(), Column("id", Integer, primary_key=True),
                          Column("n", Integer, default=lambda: 7))
        with pytest.raises(ValueError, match="Python defaults"):
            Prepared(insert(defaulted), columns=("id",)).rowcount(conn, {"id": 1})


# --- group commit (SQLite file: the writer lock is what makes units queue) ---------------------------


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'group.sqlite3'}"
    upgrade(url)
    database = Database.from_url(url)
    META.create_all(database.engine)
    try:
        yield database
    finally:
        database.dispose()


def _insert(name: str, fail: bool = False) -> Callable[[Session], str]:
    def work(session: Session) -> str:
        session.execute(insert(THINGS), {**ROW, "name": name})
        if fail:
            raise ValueError(f"{name} failed")
        return f"{name} done"

    return work


def _commits(database: Database) -> list[int]:
    commits = [0]

    @event.listens_for(database.engine, "commit")
    def count(_conn: Any) -> None:
        commits[0] += 1

    return commits


def _queued_behind_a_blocker(database: Database, works: list[Callable[[Session], str]]) -> list[Any]:
    """Run one unit that holds the leader until ``works`` have all queued behind it (each from its own
    thread); returns each unit's result or exception, in order."""
    group = database._group_commit
    assert isinstance(group, GroupCommit)
    inside, release = threading.Event(), threading.Event()

    def blocker(session: Session) -> str:
        inside.set()
        assert release.wait(10)
        return _insert("blocker")(session)

    results: list[Any] = [None] * len(works)

    def call(i: int, work: Callable[[Session], str]) -> None:
        try:
            results[i] = database.batched(work)
        except Exception as exc:
            results[i] = exc

    first = threading.Thread(target=lambda: database.batched(blocker))
    first.start()
    assert inside.wait(10)
    threads = [threading.Thread(target=call, args=(i, w)) for i, w in enumerate(works)]
    for t in threads:
        t.start()
    while len(group._queue) < len(works):  # every follower has queued its unit
        threading.Event().wait(0.005)
    release.set()
    for t in [first, *threads]:
        t.join(10)
    return results


def _names(database: Database) -> list[str]:
    with database.read() as s:
        return list(s.scalars(select(THINGS.c.name).order_by(THINGS.c.name)))


def test_units_that_arrive_together_share_one_commit(sqlite_file: Database) -> None:
    commits = _commits(sqlite_file)
    results = _queued_behind_a_blocker(sqlite_file, [_insert(f"n{i}") for i in range(5)])
    assert results == [f"n{i} done" for i in range(5)]
    assert commits[0] == 2  # the blocker alone, then the five together
    assert _names(sqlite_file) == ["blocker", "n0", "n1", "n2", "n3", "n4"]


def test_units_that_queue_while_another_process_writes_join_the_waiting_leaders_batch(
    sqlite_file: Database,
) -> None:
    """The leader takes the write lock before it takes its batch: what queued while another process
    held the lock commits with the leader's unit, not in a transaction of its own after it."""
    other_process = Database.from_url(str(sqlite_file.engine.url))  # its own lock file descriptor
    group = sqlite_file._group_commit
    commits = _commits(sqlite_file)
    results: list[Any] = [None] * 4

    def call(i: int) -> None:
        results[i] = sqlite_file.batched(_insert(f"n{i}"))

    def wait_until(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.005)

    try:
        with other_process.writer_lock.held():  # type: ignore[union-attr]
            leader = threading.Thread(target=call, args=(0,))
            leader.start()
            wait_until(group._leader.locked)  # the leader is waiting for the write lock
            followers = [threading.Thread(target=call, args=(i,)) for i in (1, 2, 3)]
            for t in followers:
                t.start()
            wait_until(lambda: sum(not item.taken for item in group._queue) >= 3)
        for t in [leader, *followers]:
            t.join(10)
    finally:
        other_process.dispose()
    assert results == [f"n{i} done" for i in range(4)]
    assert commits[0] == 1  # all four in the one transaction the leader waited for
    assert _names(sqlite_file) == ["n0", "n1", "n2", "n3"]


def test_a_failing_unit_fails_alone(sqlite_file: Database) -> None:
    commits = _commits(sqlite_file)
    works = [_insert("ok1"), _insert("bad", fail=True), _insert("ok2")]
    results = _queued_behind_a_blocker(sqlite_file, works)
    assert results[0] == "ok1 done" and results[2] == "ok2 done"
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad failed"
    assert _names(sqlite_file) == ["blocker", "ok1", "ok2"]  # nothing of the failed unit
    assert commits[0] == 3  # the blocker; the batch rolled back; ok1 and ok2 again, alone (bad: rolled back)


def test_a_failed_commit_runs_each_unit_again_alone_and_applies_it_once(
    sqlite_file: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_commit, failed = Session.commit, [0]

    def commit_failing_once_for_a_batch(self: Session) -> None:
        pending = self.execute(select(func.count()).select_from(THINGS)).scalar_one()
        if pending >= 3 and not failed[0]:  # the blocker's row plus a batch of two
            failed[0] += 1
            raise OSError("disk I/O error")
        real_commit(self)

    monkeypatch.setattr(Session, "commit", commit_failing_once_for_a_batch)
    results = _queued_behind_a_blocker(sqlite_file, [_insert("a"), _insert("b")])
    assert failed[0] == 1
    assert results == ["a done", "b done"]
    assert _names(sqlite_file) == ["a", "b", "blocker"]


def test_batched_without_the_writer_lock_is_one_transaction(things: Database) -> None:
    assert things.batched(_insert("only")) == "only done"
    with pytest.raises(ValueError):
        things.batched(_insert("never", fail=True))
    assert _names(things) == ["only"]


def _batched_in_child(database: Database, done: Any) -> None:
    database.engine.dispose(close=False)  # the parent's pooled connections are not the child's
    database.batched(_insert("child"))
    done.set()


def test_a_forked_child_starts_with_fresh_group_commit_mutexes(sqlite_file: Database) -> None:
    import multiprocessing as mp

    group = sqlite_file._group_commit
    done = mp.get_context("fork").Event()
    with group._leader:  # held by this thread while the child is forked: it must not inherit it
        child = mp.get_context("fork").Process(target=_batched_in_child, args=(sqlite_file, done))
        child.start()
        finished = done.wait(15)
    child.join(10)
    if child.is_alive():  # stuck on an inherited mutex
        child.kill()
        child.join(5)
    assert finished and child.exitcode == 0
    assert _names(sqlite_file) == ["child"]


# --- durability on SQLite: the WAL is synced after the write lock is released ---------------------


def test_sqlite_connections_commit_without_waiting_for_the_disk(sqlite_file: Database) -> None:
    with sqlite_file.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 1  # NORMAL: sync_wal does it


def test_a_write_transaction_returns_after_its_wal_is_synced_outside_the_write_lock(
    sqlite_file: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = sqlite_file.writer_lock
    assert lock is not None and sqlite_file.wal_path is not None
    synced: list[tuple[int, bool]] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        probe = os.open(lock.path, os.O_RDWR)
        try:  # another process could take the write lock while we wait for the disk
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(probe, fcntl.LOCK_UN)
            free = True
        except BlockingIOError:
            free = False
        finally:
            os.close(probe)
        synced.append((os.fstat(fd).st_ino, free))
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    with sqlite_file.transaction() as s:
        s.execute(insert(THINGS), ROW)
        assert synced == []  # not before the commit
    assert synced == [(os.stat(sqlite_file.wal_path).st_ino, True)]
    assert sqlite_file.batched(_insert("乙")) == "乙 done"
    assert len(synced) == 2
    with pytest.raises(ValueError):
        with sqlite_file.transaction() as s:
            s.execute(insert(THINGS), ROW)
            raise ValueError("rolled back")
    assert len(synced) == 2  # nothing committed, nothing to sync
    with sqlite_file.read() as s:
        s.execute(select(THINGS)).all()
    assert len(synced) == 2  # readers never sync


def _hold_the_first_sync(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """The first ``fdatasync`` from now on waits until ``release`` is set (``held`` says it has
    started); later ones go straight to the disk."""
    held, release = threading.Event(), threading.Event()
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        if not held.is_set():
            held.set()
            assert release.wait(10)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return held, release


def test_a_batch_is_answered_only_after_its_wal_is_synced(
    sqlite_file: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = _hold_the_first_sync(monkeypatch)
    answers: list[str] = []
    caller = threading.Thread(target=lambda: answers.append(sqlite_file.batched(_insert("甲"))))
    caller.start()
    assert entered.wait(10)
    time.sleep(0.05)
    assert answers == []  # committed, but not answered while the disk has not confirmed it
    release.set()
    caller.join(10)
    assert answers == ["甲 done"]


def test_the_next_batch_commits_while_the_last_one_waits_for_the_disk(
    sqlite_file: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader gives up the leader mutex before it syncs: a unit that arrives meanwhile is run and
    committed at once, and the first caller is still answered only once its own sync is done."""
    first_sync, release = _hold_the_first_sync(monkeypatch)
    answers: list[str] = []
    first = threading.Thread(target=lambda: answers.append(sqlite_file.batched(_insert("甲"))))
    first.start()
    assert first_sync.wait(10)  # 甲 committed, its sync held
    second = threading.Thread(target=lambda: answers.append(sqlite_file.batched(_insert("乙"))))
    second.start()
    second.join(10)
    assert answers == ["乙 done"]  # ran, committed and synced while 甲's sync was still held
    assert _names(sqlite_file) == ["乙", "甲"]
    release.set()
    first.join(10)
    assert answers == ["乙 done", "甲 done"]


def test_a_batch_whose_sync_fails_is_answered_with_the_error_and_not_run_again(
    sqlite_file: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Committed but not known to be on disk: the caller gets the error (a notification is answered
    500 and sent again; applying it again finds it), and the unit is not run a second time."""
    runs: list[str] = []

    def unit(session: Session) -> str:
        runs.append("丙")
        return _insert("丙")(session)

    def failing(_fd: int) -> None:
        raise OSError("disk I/O error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError, match="disk I/O error"):
        sqlite_file.batched(unit)
    monkeypatch.undo()
    assert runs == ["丙"] and _names(sqlite_file) == ["丙"]


def test_syncing_a_wal_that_is_gone_does_nothing(tmp_path: Path) -> None:
    database = Database.from_url(f"sqlite:///{tmp_path / 'gone.sqlite3'}")
    assert database.wal_path == f"{tmp_path / 'gone.sqlite3'}-wal" and not os.path.exists(database.wal_path)
    database.sync_wal()  # nothing was written yet: no WAL, nothing to flush
    assert Database.from_url("sqlite://").wal_path is None


def test_a_loaded_copy_reads_like_a_loaded_row_and_tracks_changes_from_there(db: Database) -> None:
    from sqlalchemy import inspect as sa_inspect

    from payments.models import Bill, BillStatus, Customer

    customer = loaded_copy(Customer, {"id": 7, "name": "张三"})
    bill = loaded_copy(Bill, {"id": 1, "number": "B2611-0001", "amount_fen": 3_800_000, "paid_fen": 0,
                              "refunded_fen": 0, "status": BillStatus.open, "seq": 1, "customer": customer})
    state = sa_inspect(bill)
    assert state.transient and not state.modified  # as if loaded: nothing to write yet
    assert (bill.outstanding_fen, bill.customer.name, bill.title) == (3_800_000, "张三", None)
    bill.apply_payment(1_000_000)
    assert (bill.paid_fen, bill.status) == (1_000_000, BillStatus.partially_paid)
    assert bill.outstanding_fen == 2_800_000
    assert state.modified and sa_inspect(bill).attrs.paid_fen.history.added == [1_000_000]
