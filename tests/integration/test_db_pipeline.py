"""db.pipeline (PostgreSQL: psycopg's pipeline mode; SQLite: statements run at once), the guards that
close a pipeline left open for the COMMIT, the ping of idle pooled connections, and the counter's
receipt number computed in SQL."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError

from db import CHINA_TZ, Database, Pending, Prepared, pipeline, session_connection
from payments import numbers
from tests.fixtures.database import with_tables

META = MetaData()
ITEMS = Table("pipeline_items", META, Column("id", Integer, primary_key=True), Column("name", String(20)))
ADD = Prepared(insert(ITEMS), columns=("id", "name"))
ADD_RETURNING = Prepared(insert(ITEMS).returning(ITEMS.c.id, ITEMS.c.name), columns=("id", "name"))
RENAME = Prepared(update(ITEMS).where(ITEMS.c.id == bindparam("item")).values(name=bindparam("new_name")))


@pytest.fixture
def items(db: Database) -> Iterator[Database]:
    yield from with_tables(db, META)


@pytest.fixture
def pg_items(pg_db: Database) -> Iterator[Database]:
    yield from with_tables(pg_db, META)


def _names(database: Database) -> list[str]:
    with database.read() as s:
        return list(s.scalars(select(ITEMS.c.name).order_by(ITEMS.c.id)))


def _in_pipeline_mode(conn: Any) -> bool:
    return bool(conn.connection.dbapi_connection.pgconn.pipeline_status)


def _sent(trace: Any) -> list[str]:
    """The frontend messages of a libpq protocol trace, as ``Parse "" "BEGIN" 0``, ``Sync``, …"""
    messages = [line.split("\t")[1:] for line in trace.read_text().splitlines()]
    return [" ".join(part.strip() for part in fields[2:]) for fields in messages  # (a line of a
            if len(fields) > 2 and fields[0] == "F"]  # statement's own text has no tabs)


def test_statements_of_a_block_give_their_results_on_both_databases(items: Database) -> None:
    with items.transaction() as s:
        conn = session_connection(s)
        with pipeline(conn):
            added = ADD_RETURNING.send(conn, {"id": 1, "name": "甲"})
            renamed = RENAME.send(conn, {"item": 1, "new_name": "乙"})
            missing = RENAME.send(conn, {"item": 99, "new_name": "丙"})
        assert tuple(added.first()) == (1, "甲")
        assert (renamed.rowcount(), missing.rowcount()) == (1, 0)
        assert added.rowcount() == 1  # a statement with rows: how many it returned
    assert _names(items) == ["乙"]


def test_an_error_surfaces_when_sent_on_sqlite_and_at_the_blocks_end_on_postgresql(items: Database) -> None:
    reached_the_blocks_end = False
    with pytest.raises(IntegrityError):
        with items.transaction() as s:
            conn = session_connection(s)
            with pipeline(conn):
                ADD.send(conn, {"id": 1, "name": "甲"})
                ADD.send(conn, {"id": 1, "name": "甲"})  # SQLite: raises here
                reached_the_blocks_end = True  # PostgreSQL: queued, raised when the block ends
    assert reached_the_blocks_end is (not items.is_sqlite)
    assert _names(items) == []


def test_postgresql_queues_a_block_and_reads_every_result_at_its_end(pg_items: Database) -> None:
    with pg_items.transaction() as s:
        conn = session_connection(s)
        with pipeline(conn):
            assert _in_pipeline_mode(conn)
            added = ADD_RETURNING.send(conn, {"id": 1, "name": "甲"})
            renamed = RENAME.send(conn, {"item": 1, "new_name": "乙"})
            assert added._cursor.pgresult is None  # queued: no result has come back yet
        assert not _in_pipeline_mode(conn)
        assert renamed._cursor.pgresult is not None  # the block's end brought everything back
        assert (tuple(added.first()), renamed.rowcount()) == ((1, "甲"), 1)
    assert _names(pg_items) == ["乙"]


def test_reading_inside_a_block_waits_for_what_was_queued_before_it(pg_items: Database) -> None:
    with pg_items.transaction() as s:
        conn = session_connection(s)
        with pipeline(conn):
            ADD.send(conn, {"id": 1, "name": "甲"})
            renamed = RENAME.send(conn, {"item": 1, "new_name": "乙"})
            assert renamed.rowcount() == 1  # synced here, inside the block
            assert _in_pipeline_mode(conn)
            count = Prepared(select(func.count()).select_from(ITEMS)).send(conn, {})
            assert count.scalar() == 1


def test_an_until_commit_block_goes_out_with_the_commit(pg_items: Database) -> None:
    with pg_items.transaction() as s:
        conn = session_connection(s)
        with pipeline(conn, until_commit=True):
            added = ADD_RETURNING.send(conn, {"id": 1, "name": "甲"})
        ADD.send(conn, {"id": 2, "name": "乙"})  # joins the open pipeline
        assert _in_pipeline_mode(conn) and added._cursor.pgresult is None
        dbapi = conn.connection.dbapi_connection
    assert not dbapi.pgconn.pipeline_status  # left when the connection went back to the pool
    assert tuple(added.first()) == (1, "甲")  # its result came back with the COMMIT
    assert _names(pg_items) == ["甲", "乙"]
    with pg_items.transaction() as s:  # the pooled connection works as before
        assert s.execute(select(func.count()).select_from(ITEMS)).scalar_one() == 2


def test_the_error_of_a_statement_sent_with_the_commit_fails_the_commit(pg_items: Database) -> None:
    with pytest.raises(IntegrityError):  # wrapped as SQLAlchemy wraps it, raised by the COMMIT
        with pg_items.transaction() as s:
            conn = session_connection(s)
            with pipeline(conn, until_commit=True):
                ADD.send(conn, {"id": 1, "name": "甲"})
                ADD.send(conn, {"id": 1, "name": "甲"})
            reached_the_commit = True
    assert reached_the_commit
    assert _names(pg_items) == []
    with pg_items.transaction() as s:
        s.execute(insert(ITEMS), {"id": 1, "name": "乙"})
    assert _names(pg_items) == ["乙"]


def test_sqlalchemy_statements_after_an_until_commit_block_sync_it_first(pg_items: Database) -> None:
    with pg_items.transaction() as s:
        conn = session_connection(s)
        with pipeline(conn, until_commit=True):
            ADD.send(conn, {"id": 1, "name": "甲"})
            ADD.send(conn, {"id": 2, "name": "甲"})
        result = s.execute(update(ITEMS).where(ITEMS.c.name == "甲").values(name="乙"))
        assert result.rowcount == 2  # the queued inserts ran first; rowcount is exact again
        assert not _in_pipeline_mode(conn)
    assert _names(pg_items) == ["乙", "乙"]

    with pytest.raises(IntegrityError):  # an error still queued surfaces at that statement
        with pg_items.transaction() as s:
            conn = session_connection(s)
            with pipeline(conn, until_commit=True):
                ADD.send(conn, {"id": 1, "name": "丙"})
            s.execute(select(func.count()).select_from(ITEMS))
    assert _names(pg_items) == ["乙", "乙"]


def test_a_failure_after_an_until_commit_block_rolls_everything_back(pg_items: Database) -> None:
    with pytest.raises(RuntimeError, match="after"):
        with pg_items.transaction() as s:
            conn = session_connection(s)
            with pipeline(conn, until_commit=True):
                ADD.send(conn, {"id": 1, "name": "甲"})
                ADD.send(conn, {"id": 1, "name": "甲"})  # its error is dropped with the transaction
            raise RuntimeError("failed after the block")
    with pytest.raises(RuntimeError, match="inside"):
        with pg_items.transaction() as s:
            conn = session_connection(s)
            with pipeline(conn, until_commit=True):
                ADD.send(conn, {"id": 2, "name": "乙"})
                raise RuntimeError("failed inside the block")
    assert _names(pg_items) == []
    with pg_items.transaction() as s:
        assert not _in_pipeline_mode(session_connection(s))
        ADD.send(session_connection(s), {"id": 3, "name": "丙"})
    assert _names(pg_items) == ["丙"]


def test_pending_results_are_read_once_and_say_what_they_hold(items: Database) -> None:
    with items.transaction() as s:
        conn = session_connection(s)
        renamed = RENAME.send(conn, {"item": 1, "new_name": "乙"})
        assert isinstance(renamed, Pending)
        with pytest.raises(TypeError, match="no rows"):
            renamed.first()
        assert renamed.rowcount() == 0
        with pytest.raises(LookupError):
            Prepared(select(ITEMS.c.id)).send(conn, {}).scalar()


# --- the ping of idle pooled connections (PostgreSQL) ----------------------------------------------


def _backend_pid(database: Database) -> int:
    with database.transaction() as s:
        return int(s.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(url: str, pid: int) -> None:
    """End a backend from another engine (a pool would hand back the very connection to end)."""
    outsider = Database.from_url(url, pool_size=1)
    try:
        with outsider.engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            other.commit()
    finally:
        outsider.dispose()


@pytest.fixture
def pg_url(pg_database_url: str) -> str:
    return pg_database_url


def test_an_idle_connection_whose_server_went_away_is_replaced_before_use(pg_url: str) -> None:
    database = Database.from_url(pg_url, pool_size=2, ping_after_idle=0.05)
    try:
        pid = _backend_pid(database)
        _terminate(pg_url, pid)
        time.sleep(0.1)
        assert _backend_pid(database) != pid  # pinged, found dead, replaced: nothing failed
    finally:
        database.dispose()


def test_a_connection_used_just_now_is_not_pinged(pg_url: str) -> None:
    database = Database.from_url(pg_url, pool_size=1, max_overflow=0, ping_after_idle=60)
    pings = []
    real_ping = database.engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(1)
        return bool(real_ping(dbapi_connection))

    database.engine.dialect.do_ping = counted  # type: ignore[method-assign]
    try:
        pid = _backend_pid(database)
        for _ in range(3):
            assert _backend_pid(database) == pid
        assert pings == []
        # what that trades: a connection lost within the idle window fails its next statement once;
        # the pool then drops it, and the next unit of work gets a fresh one
        _terminate(pg_url, pid)
        with pytest.raises(OperationalError):
            _backend_pid(database)
        assert _backend_pid(database) != pid
    finally:
        database.dispose()


# --- the receipt number computed in SQL -----------------------------------------------------------


@pytest.mark.parametrize("before", [0, 41, 99_998, 99_999, 123_455])
def test_the_counted_receipt_number_is_the_one_python_formats(db: Database, before: int) -> None:
    name, prefix = "receipt-2611", "R2611-"
    counted = Prepared(select(numbers.counted_receipt_number()))
    with db.transaction() as s:
        s.execute(insert(numbers.Counter), {"name": name, "value": before})
    with db.transaction() as s:
        numbers.bump(s, name)
        in_sql = counted.scalar(session_connection(s), {"counter_name": name, "receipt_prefix": prefix})
    with db.transaction() as s:
        s.execute(update(numbers.Counter).where(numbers.Counter.name == name).values(value=before))
    with db.transaction() as s:
        in_python = numbers.next_receipt_number(s, dt.datetime(2026, 11, 26, tzinfo=CHINA_TZ))
    assert in_sql == in_python == f"R2611-{before + 1:05d}"


def test_a_unit_of_work_takes_one_round_trip_per_block(pg_items: Database, tmp_path: Any) -> None:
    """psycopg, left to itself, syncs the BEGIN it sends before a transaction's first statement on its
    own, and syncs its commit() and then the pipeline's exit; here BEGIN is queued with the first
    statements and the COMMIT behind the last ones: the whole unit of work — BEGIN, a block of two
    statements, one more with the COMMIT — is two round trips."""
    trace = tmp_path / "protocol.trace"
    session = pg_items.session_factory()
    try:
        conn = session_connection(session)
        pgconn = conn.connection.dbapi_connection.pgconn
        with trace.open("w") as out:
            pgconn.trace(out.fileno())
            try:
                with pipeline(conn):
                    ADD.send(conn, {"id": 1, "name": "甲"})
                    renamed = RENAME.send(conn, {"item": 1, "new_name": "乙"})
                assert renamed.rowcount() == 1
                with pipeline(conn, until_commit=True):
                    ADD.send(conn, {"id": 2, "name": "丙"})
                session.commit()
                left = not pgconn.pipeline_status
            finally:
                pgconn.untrace()
    finally:
        session.close()
    sent = _sent(trace)
    first_sync = sent.index("Sync")
    parsed = [message.split('"')[3].split()[0] for message in sent if message.startswith("Parse")]
    assert sent.count("Sync") == 2
    assert parsed == ["BEGIN", "INSERT", "UPDATE", "INSERT", "COMMIT"]
    assert sum(message.startswith("Parse") for message in sent[:first_sync]) == 3  # BEGIN went with both
    assert left  # pipeline mode was left at the COMMIT, not when the connection went back to the pool
    assert _names(pg_items) == ["乙", "丙"]


FIRST_WRITES = {
    "Connection.execute": lambda s, conn: s.execute(insert(ITEMS), {"id": 1, "name": "甲"}),
    "Prepared": lambda s, conn: ADD.send(conn, {"id": 1, "name": "甲"}).rowcount(),
    "Prepared.many": lambda s, conn: ADD.many(conn, [{"id": 1, "name": "甲"}]),
    "Prepared in a pipeline": lambda s, conn: _in_a_pipeline(conn),
}


def _in_a_pipeline(conn: Any) -> None:
    with pipeline(conn):
        ADD.send(conn, {"id": 1, "name": "甲"})


@pytest.mark.parametrize("first", sorted(FIRST_WRITES))
def test_the_first_statement_of_a_transaction_is_inside_it(pg_items: Database, first: str) -> None:
    """Whichever way a transaction's first write runs, BEGIN went before it: a later failure takes
    it back with everything else (connections run in psycopg's autocommit mode, so a write that ran
    without our BEGIN would stay)."""
    with pytest.raises(IntegrityError):
        with pg_items.transaction() as s:
            conn = session_connection(s)
            assert conn.connection.dbapi_connection.autocommit  # BEGIN is ours to send
            FIRST_WRITES[first](s, conn)
            s.execute(insert(ITEMS), {"id": 1, "name": "again"})  # the same primary key: fails
    assert _names(pg_items) == []


def test_a_unit_that_runs_nothing_and_a_pinged_connection_leave_no_transaction_open(pg_url: str) -> None:
    database = Database.from_url(pg_url, pool_size=1, max_overflow=0, ping_after_idle=0)
    try:
        with database.transaction() as s:
            conn = session_connection(s)  # checked out and pinged: the ping ran outside any transaction
            pgconn = conn.connection.dbapi_connection.pgconn
            assert pgconn.transaction_status == TransactionStatus.IDLE
            s.execute(select(func.count()).select_from(text("pg_class")))
            assert pgconn.transaction_status == TransactionStatus.INTRANS
        assert pgconn.transaction_status == TransactionStatus.IDLE  # committed
        with database.transaction():
            pass
        assert pgconn.transaction_status == TransactionStatus.IDLE
    finally:
        database.dispose()


def test_a_read_unit_runs_its_statements_without_begin_or_rollback(pg_items: Database, tmp_path: Any) -> None:
    """Under READ COMMITTED every statement has its own snapshot anyway: a read unit sends neither
    BEGIN nor, when its connection goes back to the pool, ROLLBACK (a round trip of its own)."""
    with pg_items.transaction() as s:
        s.execute(insert(ITEMS), [{"id": 1, "name": "甲"}, {"id": 2, "name": "乙"}])
    trace = tmp_path / "protocol.trace"
    with trace.open("w") as out:
        with pg_items.read() as s:
            pgconn = session_connection(s).connection.dbapi_connection.pgconn
            pgconn.trace(out.fileno())
            names = list(s.scalars(select(ITEMS.c.name).order_by(ITEMS.c.id)))
            count = s.execute(select(func.count()).select_from(ITEMS)).scalar_one()
        pgconn.untrace()
    sent = _sent(trace)
    assert (names, count) == (["甲", "乙"], 2)
    assert not [message for message in sent if "BEGIN" in message or "ROLLBACK" in message]
    assert [message.split()[0] for message in sent] == ["Query", "Query"]  # the two statements only
