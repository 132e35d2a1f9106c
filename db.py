"""Engine and session factory (built in create_app, never at import), Base and naming convention.

SQLite is the embedded default; it has no row locks, so every transaction starts with
``BEGIN IMMEDIATE``: writers are serialised by the database file lock, which gives the same
"one transition at a time per bill" guarantee that ``SELECT … FOR UPDATE`` gives on PostgreSQL.
Writers queue for that lock on a kernel lock first (``WriterLock``), not in SQLite's busy handler.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import threading
import time
import weakref
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar, cast

from psycopg.pq import TransactionStatus
from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    MetaData,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Session, configure_mappers, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeDecorator

_log = logging.getLogger("renopay.db")
READ_ONLY = "renopay_read_only"  # execution option of the engine behind Database.read()

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_file(url: str) -> str | None:
    """The SQLite database file of ``url``, as an absolute path; None for another database or an
    in-memory one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return os.path.abspath(parsed.database)


def normalise_url(url: str) -> str:
    """Prefer psycopg 3 for plain ``postgresql://`` URLs."""
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


PING_AFTER_IDLE = 1.0  # seconds: a pooled connection idle longer than this is pinged before use
_IDLE_SINCE = "renopay_idle_since"  # ConnectionRecord.info key


def build_engine(url: str, *, ping_after_idle: float = PING_AFTER_IDLE, **kwargs: Any) -> Engine:
    url = normalise_url(url)
    if not is_sqlite(url):
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        engine = create_engine(url, **kwargs)
        if not kwargs.get("pool_pre_ping"):
            _ping_after_idle(engine, ping_after_idle)
        if engine.dialect.driver == "psycopg":
            install_deferred_begin(engine)
            install_pipeline_guards(engine)
        return engine

    database = sqlite_file(url)
    if database:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    else:
        kwargs.setdefault("poolclass", NullPool)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite so BEGIN IMMEDIATE can be issued below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        # A commit appends to the WAL without waiting for the disk; Database.transaction syncs the WAL
        # itself once the write lock is released, before the unit of work returns (see sync_wal).
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Readers (Database.read) take a deferred BEGIN: a consistent WAL snapshot, no write lock.
        # Straight on the DBAPI cursor (every transaction runs this; errors wrapped as SQLAlchemy's).
        sql = "BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE"
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute(sql)
        except conn.dialect.loaded_dbapi.Error as exc:
            _raise_wrapped(conn, exc, sql, None, cursor)
        finally:
            cursor.close()

    return engine


def _ping_after_idle(engine: Engine, after: float) -> None:
    """``pool_pre_ping`` for connections that sat in the pool: one checked out within ``after``
    seconds of its last use is handed out as it is; an older one is pinged first and, if the
    database no longer answers on it (a restart, a dropped idle connection), replaced by a fresh
    one before anything runs on it. Pinging every checkout cost a round trip per unit of work (12%
    of a payment notification's time on PostgreSQL). What a connection loses while in use, or within
    ``after`` seconds, fails that statement: the connection is discarded (and the pool's older ones
    with it), and the request fails as it would on any database error — a notification is answered
    500 and WeChat sends it again."""
    clock = time.monotonic

    @event.listens_for(engine, "connect")
    def _connected(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = clock()

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_IDLE_SINCE] = clock()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is not None and clock() - since < after:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(f"idle pooled connection failed its ping: {exc}") from exc


class WriterLock:
    """Queues the writers of one SQLite file, across threads and processes, before BEGIN IMMEDIATE.

    SQLite's busy handler polls: a writer that finds the file locked sleeps (1, 2, 5 … up to 100 ms)
    and tries again, so under contention the lock sits idle while its waiters sleep, and a write
    can wait tens of milliseconds behind one that took a millisecond. Here a thread takes this
    process's mutex, then an exclusive ``flock`` on ``<database>-writer.lock``; the kernel hands the
    lock to the next process the moment it is released. Re-entrant per thread (a nested unit of
    work keeps the outer one's lock). Writers that bypass it (migrations, other tools) still meet
    BEGIN IMMEDIATE and the busy timeout, so correctness never depends on it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._reset()
        _RESET_AFTER_FORK.add(self)

    def _reset(self) -> None:
        """Fresh state, also in a forked child: a copied mutex may be held by a thread that does not
        exist there, and a copied file descriptor would share the parent's flock."""
        self._mutex = threading.Lock()
        self._local = threading.local()
        self._fd: int | None = None

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._fd

    @contextmanager
    def held(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth = depth
            return
        with self._mutex:
            fd = self._file()
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._local.depth = 1
            try:
                yield
            finally:
                self._local.depth = 0
                fcntl.flock(fd, fcntl.LOCK_UN)


# Objects holding mutexes (WriterLock, GroupCommit): in a forked child a copied mutex may be held by a
# thread that does not exist there, so each starts afresh.
_RESET_AFTER_FORK: weakref.WeakSet[WriterLock | GroupCommit] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for holder in list(_RESET_AFTER_FORK):
        holder._reset()


os.register_at_fork(after_in_child=_reset_after_fork)

T = TypeVar("T")
Work = Callable[[Session], Any]  # a unit of work, run in a write transaction's session
UnitOutcome = tuple[Any, BaseException | None]  # a unit's (result, error)


class _Work:
    __slots__ = ("_finished", "error", "result", "taken", "work")

    def __init__(self, work: Callable[[Session], Any]) -> None:
        self.work = work
        self.result: Any = None
        self.error: BaseException | None = None
        self.taken = False  # in a batch that a leader is running (or has run)
        self._finished = threading.Event()

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self._finished.set()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self) -> None:
        self._finished.wait()


class GroupCommit:
    """Units of work that arrive together share one SQLite write transaction (group commit).

    On SQLite every write transaction is serialised by one lock, and its COMMIT (an fsync of the
    WAL) is most of its cost; under a burst of notifications the lock's waiters also compete for the
    GIL with the thread holding it. Here a thread queues its unit and takes the leader mutex; the
    leader takes the write lock and only then runs everything queued so far — so what arrived while
    another process held the lock goes along — in one transaction, and commits once (if any unit fails,
    the whole transaction is rolled back and every unit runs again alone, so a failure reaches only
    its own caller; units must therefore be safe to run twice). The leader then gives up the leader
    mutex — the next batch may start, and take the write lock, while this one's WAL goes to disk —
    syncs the WAL, and only then hands out the results: nobody is answered before their work is
    durable. A thread whose unit an earlier leader took waits for that leader's answer. Per process
    (the writer lock still serialises the processes)."""

    MAX_BATCH = 16  # bounds how long the last unit of a batch waits

    def __init__(self, database: Database) -> None:
        self.database = database
        self._reset()
        _RESET_AFTER_FORK.add(self)

    def _reset(self) -> None:
        self._queue: list[_Work] = []
        self._queue_mutex = threading.Lock()
        self._leader = threading.Lock()

    def run(self, work: Callable[[Session], T]) -> T:
        item = _Work(work)
        with self._queue_mutex:
            self._queue.append(item)
        while not item.taken:  # a long queue: the oldest MAX_BATCH go first
            with self._leader:
                if item.taken:
                    break
                # The write lock first, then the batch: whatever queued while the lock was awaited
                # (another process's transaction) joins this transaction instead of the next one.
                with self._lock.held():
                    with self._queue_mutex:
                        batch, self._queue = self._queue[: self.MAX_BATCH], self._queue[self.MAX_BATCH:]
                    for queued in batch:
                        queued.taken = True
                    outcomes = self._run_batch(batch)
            self._sync_and_answer(batch, outcomes)  # outside the leader mutex and the write lock
        item.wait()
        if item.error is not None:
            raise item.error
        return cast(T, item.result)

    def run_gathered(self, works: Sequence[Work]) -> list[UnitOutcome]:
        """Units a caller gathered itself (the payment writer process, payments/writer.py) as one
        batch: under the write lock, in one transaction (each unit again alone if any fails).
        Returns each unit's (result, error), committed but not synced: the caller syncs the WAL
        (``Database.sync_wal``) before it answers anyone."""
        batch = [_Work(work) for work in works]
        with self._lock.held():
            for item in batch:
                item.taken = True
            return self._run_batch(batch)

    @property
    def _lock(self) -> WriterLock:  # re-entrant: each unit's transaction takes it again
        return cast(WriterLock, self.database.writer_lock)  # batched() groups only on a SQLite file

    def _run_batch(self, batch: list[_Work]) -> list[tuple[Any, BaseException | None]]:
        """Each unit's (result, error), committed but not yet synced."""
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            if len(batch) > 1:
                together = self._together(batch)
                if together is not None:
                    outcomes = [(result, None) for result in together]
                    return outcomes
            for item in batch:  # alone (or again, alone, after a unit of the batch failed)
                try:
                    with self.database.transaction(sync=False) as session:
                        result = item.work(session)
                except Exception as exc:
                    outcomes.append((None, exc))
                else:
                    outcomes.append((result, None))
            return outcomes
        finally:  # interrupted (the leader's thread got a BaseException): nobody waits on a lost unit
            if len(outcomes) != len(batch):
                for item in batch:
                    item.finish(error=RuntimeError("the batch this unit was in was interrupted"))

    def _together(self, batch: list[_Work]) -> list[Any] | None:
        """All units in one transaction; None (everything rolled back) if any of them, or the commit,
        fails — each then runs again alone, so one unit's failure never reaches another's result."""
        results = []
        try:
            with self.database.transaction(sync=False) as session:
                for item in batch:
                    results.append(item.work(session))
        except Exception:
            return None
        return results

    def _sync_and_answer(self, batch: list[_Work], outcomes: list[tuple[Any, BaseException | None]]) -> None:
        if not batch or batch[0].done:  # interrupted: already answered with the error
            return
        try:
            self.database.sync_wal()  # covers every commit of the batch (the WAL is flushed whole)
        except Exception as exc:  # committed, but not known to be on disk: the callers must retry
            for item in batch:
                item.finish(error=exc)
            return
        for item, (result, error) in zip(batch, outcomes, strict=True):
            item.finish(result, error)


@dataclass
class Database:
    engine: Engine
    session_factory: sessionmaker[Session]
    writer_lock: WriterLock | None = None
    wal_path: str | None = None  # a SQLite file's write-ahead log, synced after each write transaction
    file: str | None = None  # a SQLite database file, as an absolute path

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Database:
        engine = build_engine(url, **kwargs)
        database = sqlite_file(url)
        if database is None:
            return cls(engine, sessionmaker(engine, expire_on_commit=False))
        lock = WriterLock(f"{database}-writer.lock")
        return cls(engine, sessionmaker(engine, expire_on_commit=False), lock, f"{database}-wal", database)

    @cached_property
    def _read_engine(self) -> Engine:
        return self.engine.execution_options(**{READ_ONLY: True})  # same pool, deferred BEGIN on SQLite

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only unit, never a write lock, nothing to commit. On SQLite one consistent snapshot
        (a deferred BEGIN: readers don't queue behind writers), rolled back at the end; on PostgreSQL
        (READ COMMITTED) each statement sees the data as of its start, and runs without BEGIN (see
        ``install_deferred_begin``). Writes belong in ``transaction``."""
        session = self.session_factory(bind=self._read_engine)
        try:
            yield session
        finally:
            session.close()  # ends the snapshot: the pool rolls the connection back on return

    @contextmanager
    def transaction(self, *, sync: bool = True) -> Iterator[Session]:
        """Unit of work: commits when the block succeeds, rolls back otherwise. On a SQLite file,
        the block runs holding the writer lock (keep anything slow, like HTTP, outside it), and the
        WAL is synced once the lock is released (``sync=False``: by the caller, before it answers
        anyone — see ``GroupCommit``)."""
        if self.writer_lock is None:
            yield from self._unit_of_work()
            return
        with self.writer_lock.held():
            yield from self._unit_of_work()
        if sync:
            self.sync_wal()

    def sync_wal(self) -> None:
        """Make what this process committed durable: ``fdatasync`` the SQLite file's WAL.

        Connections run with ``synchronous=NORMAL``: a COMMIT appends its frames to the WAL and
        returns without waiting for the disk. ``transaction`` calls this after the commit, once the
        write lock is released, and returns only then — so nobody is answered (a 204 to WeChat, a
        chat reply) before their transaction is on disk, exactly as with ``synchronous=FULL``, but
        the next writer (of any process) runs while the disk flushes, instead of queuing behind
        it; concurrent flushes of the same file merge. The WAL only grows at its end, so a flush
        also covers every earlier commit; a frame that a checkpoint has meanwhile copied into the
        database file was synced by that checkpoint (SQLite syncs the WAL before a checkpoint and
        the database after it), which is also why a WAL that is gone needs nothing. The difference
        from FULL: for the length of the flush, others can read a commit that a power cut (not a
        crash of the process) would still undo; whoever then answered on it was written later and
        is answered only after a flush that covers it too."""
        if self.wal_path is None:
            return
        try:
            fd = os.open(self.wal_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _unit_of_work(self) -> Iterator[Session]:
        session = self.session_factory()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def batched(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in a write transaction, shared with other threads' work on SQLite (see
        ``GroupCommit``): for short units that may run a second time if another unit of their batch
        fails. Returns once the transaction has committed; raises the unit's own exception."""
        if self.writer_lock is None:
            with self.transaction() as session:
                return work(session)
        return self._group_commit.run(work)

    def batch_gathered(self, works: Sequence[Work]) -> list[UnitOutcome]:
        """A SQLite file: units gathered by the caller run as one batch of the group commit, not yet
        synced (``GroupCommit.run_gathered``); each unit's (result, error)."""
        if self.writer_lock is None:
            raise RuntimeError("batch_gathered needs a SQLite database file")
        return self._group_commit.run_gathered(works)

    @cached_property
    def _group_commit(self) -> GroupCommit:
        return GroupCommit(self)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


@dataclass(frozen=True)
class _Compiled:
    sql: str
    positional: bool
    binds: tuple[tuple[str, str, Any, Any], ...]  # (name in the SQL, callers' key, default, processor)
    row: Any  # a namedtuple class for the result columns, or None
    results: tuple[tuple[int, Any], ...]  # (column index, result processor) for columns that have one


class Prepared:
    """A Core statement compiled once per dialect and run straight on the DBAPI cursor of a
    SQLAlchemy ``Connection`` — its transaction, its pool — for the hot paths (a chat read, a payment
    notification), where SQLAlchemy's per-execution machinery (execution context, events, result
    objects) costs several times what the database does.

    Parameters and rows go through the same type processors as ``Connection.execute`` (UTC
    datetimes, enums), so the values written and read are identical; callers pass the statement's
    ``bindparam`` keys. Rows come back as named tuples. No ``before_cursor_execute`` events fire and
    nothing is logged by SQLAlchemy's echo; statements with expanding (``IN``) parameters are not
    supported (render them another way)."""

    def __init__(self, statement: Any, columns: Sequence[str] = ()) -> None:
        self.statement = statement
        self.columns = list(columns)  # an INSERT without .values(): the columns callers give
        self._by_dialect: dict[str, _Compiled] = {}

    def _compiled(self, dialect: Dialect) -> _Compiled:
        compiled = self._by_dialect.get(dialect.name)
        if compiled is None:
            compiled = self._by_dialect[dialect.name] = self._compile(dialect)
        return compiled

    def _compile(self, dialect: Dialect) -> _Compiled:
        c = self.statement.compile(dialect=dialect, column_keys=self.columns or None)
        if c.literal_execute_params or c.post_compile_params:
            raise ValueError("Prepared does not support expanding or literal-execute parameters")
        if c.insert_prefetch or c.update_prefetch:  # Python-side column defaults: give every column
            raise ValueError("Prepared statements must be given the columns that have Python defaults")
        processors = c._bind_processors
        # c.binds also lists each anonymous parameter under its internal key: the rendered names only
        names = c.positiontup if c.positional else list(dict.fromkeys(c.bind_names.values()))
        binds = []
        for name in names or ():
            param = c.binds[name]
            default = _MISSING if param.required else param.effective_value
            binds.append((name, param.key, default, processors.get(name)))
        row: Any = None
        results: tuple[tuple[int, Any], ...] = ()
        if c._result_columns:
            row = _row_type([entry[0] for entry in c._result_columns])
            every = (entry[3]._cached_result_processor(dialect, None) for entry in c._result_columns)
            results = tuple((i, process) for i, process in enumerate(every) if process is not None)
        return _Compiled(c.string, bool(c.positional), tuple(binds), row, results)

    @staticmethod
    def _bind(compiled: _Compiled, params: Mapping[str, Any]) -> Any:
        values = []
        for _name, key, default, process in compiled.binds:
            value = params.get(key, default)
            if value is _MISSING:
                raise KeyError(f"missing bind parameter {key!r}")
            values.append(process(value) if process is not None and value is not None else value)
        if compiled.positional:
            return tuple(values)
        return {name: value for (name, *_), value in zip(compiled.binds, values, strict=True)}

    def send(self, connection: Connection, params: Mapping[str, Any]) -> Pending:
        """Run the statement; its result is read from the returned ``Pending``. Inside ``pipeline()``
        on PostgreSQL the statement is only queued: it goes out with the others of the block, and
        reading its result before the block ends costs a round trip. Elsewhere it runs at once and
        its result is read before this returns."""
        compiled = self._compiled(connection.dialect)
        begin_if_idle(connection)
        cursor = connection.connection.cursor()
        self._run(connection, cursor, compiled.sql, self._bind(compiled, params), many=False)
        pending = Pending(connection, compiled, cursor)
        if connection.info.get(_PIPELINE) is None:
            pending._collect()
        return pending

    @staticmethod
    def _run(connection: Connection, cursor: Any, sql: str, params: Any, *, many: bool) -> None:
        try:
            (cursor.executemany if many else cursor.execute)(sql, params)
        except connection.dialect.loaded_dbapi.Error as exc:
            cursor.close()
            _raise_wrapped(connection, exc, sql, params, cursor)

    def all(self, connection: Connection, params: Mapping[str, Any]) -> list[Any]:
        return self.send(connection, params).all()

    def first(self, connection: Connection, params: Mapping[str, Any]) -> Any:
        return self.send(connection, params).first()

    def scalar(self, connection: Connection, params: Mapping[str, Any]) -> Any:
        return self.send(connection, params).scalar()

    def rowcount(self, connection: Connection, params: Mapping[str, Any]) -> int:
        """Execute a statement without RETURNING; the number of rows it changed."""
        return self.send(connection, params).rowcount()

    def many(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """One ``executemany`` of a statement without RETURNING (inside ``pipeline()``, queued with
        the block's other statements)."""
        compiled = self._compiled(connection.dialect)
        begin_if_idle(connection)
        cursor = connection.connection.cursor()
        params = [self._bind(compiled, row) for row in rows]
        self._run(connection, cursor, compiled.sql, params, many=True)
        if connection.info.get(_PIPELINE) is None:
            cursor.close()


class Pending:
    """The result of a ``Prepared.send``: rows (through the statement's result processors) or the
    number of rows changed. Read it once; a database error of the statement is raised here (or when
    its ``pipeline()`` block ends), wrapped like ``Connection.execute`` wraps it."""

    __slots__ = ("_compiled", "_connection", "_count", "_cursor", "_rows")

    def __init__(self, connection: Connection, compiled: _Compiled, cursor: Any) -> None:
        self._connection, self._compiled, self._cursor = connection, compiled, cursor
        self._rows: list[Any] | None = None
        self._count = -1

    def _collect(self) -> None:
        """Fetch the result off the cursor (in a pipeline: flushing the queue up to this statement
        and waiting for it, unless the pipeline already brought it back) and close the cursor."""
        cursor = self._cursor
        if cursor is None:
            return
        try:
            if self._compiled.row is not None:
                self._rows = [self._row(raw) for raw in cursor.fetchall()]
            else:
                pipe = self._connection.info.get(_PIPELINE)
                if pipe is not None and cursor.pgresult is None:
                    pipe.sync()  # a statement without rows: its count arrives with the sync
                self._count = int(cursor.rowcount)
        except self._connection.dialect.loaded_dbapi.Error as exc:
            _raise_wrapped(self._connection, exc, self._compiled.sql, None, cursor)
        finally:
            self._cursor = None
            cursor.close()

    def _row(self, raw: Any) -> Any:
        compiled = self._compiled
        if not compiled.results:
            return compiled.row._make(raw)
        values = list(raw)
        for i, process in compiled.results:
            if values[i] is not None:
                values[i] = process(values[i])
        return compiled.row._make(values)

    def all(self) -> list[Any]:
        self._collect()
        if self._rows is None:
            raise TypeError("the statement returns no rows")
        return self._rows

    def first(self) -> Any:
        rows = self.all()
        return rows[0] if rows else None

    def scalar(self) -> Any:
        row = self.first()
        if row is None:
            raise LookupError("the statement returned no row")
        return row[0]

    def rowcount(self) -> int:
        self._collect()
        if self._rows is not None:
            return len(self._rows)
        return self._count


_PIPELINE = "renopay_pipeline"  # ConnectionRecord.info: the open psycopg Pipeline, if any
_PIPELINE_EXIT = "renopay_pipeline_exit"  # ConnectionRecord.info: the context manager that closes it


@contextmanager
def pipeline(connection: Connection, *, until_commit: bool = False) -> Iterator[None]:
    """Send the ``Prepared`` statements of the block together.

    On PostgreSQL (psycopg's pipeline mode) the statements are queued without waiting for their
    results, which come back together when the block ends (one round trip instead of one each; a
    transaction's BEGIN rides along, see ``install_deferred_begin``). Reading a result inside the
    block costs a round trip for everything queued so far. With ``until_commit`` the block's end does not
    wait either: its statements, and any ``Prepared`` statement sent after it, go out with the
    transaction's COMMIT (or ROLLBACK), and their errors are raised by the commit. On SQLite this
    does nothing: each statement runs when it is sent.

    Only ``Prepared`` statements may run in a pipeline, never the ORM or ``Connection.execute``:
    SQLAlchemy reads a cursor's rowcount right after executing, which a pipeline fills in only
    later. If anything else is executed on the connection while an ``until_commit`` pipeline is
    open, the pipeline is synced and closed first (``install_pipeline_guards``). Errors of queued
    statements surface when their result is read or when the pipeline is synced, wrapped like
    ``Connection.execute`` wraps them; the transaction is then failed, as after any error. Blocks
    do not nest (an inner block joins the outer one)."""
    if connection.dialect.driver != "psycopg" or connection.info.get(_PIPELINE) is not None:
        yield
        return
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None
    opened = dbapi_connection.pipeline()
    try:
        connection.info[_PIPELINE] = opened.__enter__()
    except connection.dialect.loaded_dbapi.Error as exc:
        _raise_wrapped(connection, exc, "(pipeline)", None, None)
    connection.info[_PIPELINE_EXIT] = opened
    try:
        yield
    except BaseException:
        _close_pipeline(connection.info, failed=True)
        raise
    if not until_commit:
        try:
            _close_pipeline(connection.info)
        except connection.dialect.loaded_dbapi.Error as exc:
            _raise_wrapped(connection, exc, "(pipeline)", None, None)


def _close_pipeline(info: dict[Any, Any], *, failed: bool = False) -> None:
    """Sync and leave the open pipeline, if any: what is queued is sent, every result is read, and
    the first error is raised — unless ``failed`` (the transaction is being abandoned anyway)."""
    opened = info.pop(_PIPELINE_EXIT, None)
    if opened is None:
        return
    del info[_PIPELINE]
    if not failed:
        opened.__exit__(None, None, None)
        return
    try:
        opened.__exit__(None, None, None)
    except Exception as exc:  # the statements' errors belong to a transaction that is rolled back
        _log.debug("pipeline closed on an abandoned transaction: %s", exc)


_DEFERRED_BEGIN = "renopay_deferred_begin"  # ConnectionRecord.info: this connection's BEGIN is ours to send
_BEGIN = "BEGIN"
_AUTOCOMMIT = "AUTOCOMMIT"


def install_deferred_begin(engine: Engine) -> None:
    """PostgreSQL: a transaction's BEGIN goes with its first statement, not in a round trip of its own.

    Left to itself, psycopg sends BEGIN before a transaction's first statement and, in pipeline
    mode, syncs it alone: a round trip per transaction (a third of a payment notification's). Here
    the connections run in psycopg's autocommit mode — it sends no BEGIN — and BEGIN is sent by us
    whenever a statement is about to run on a connection that SQLAlchemy has in a transaction while
    the server says idle (``begin_if_idle``): before SQLAlchemy's own executions (ORM flushes,
    ``Connection.execute``: all pass ``before_cursor_execute``), and before a ``Prepared`` statement,
    which inside a ``pipeline`` queues it in the same round trip. COMMIT and ROLLBACK are psycopg's,
    which send them whenever the server is in a transaction, whatever the mode; a transaction that
    ran nothing sends nothing. Every statement on these connections passes one of the two paths, so
    none runs outside its transaction (tests run every write path of the suite on PostgreSQL).

    Statements in SQLAlchemy's AUTOCOMMIT isolation run without BEGIN, and so do those of read units
    (``Database.read``, the ``READ_ONLY`` option): under READ COMMITTED each statement has a snapshot
    of its own, inside a transaction or not, so BEGIN and the ROLLBACK that ends a read (a round trip
    of its own, when the connection goes back to the pool) bought nothing."""

    @event.listens_for(engine, "connect")
    def _autocommit(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.autocommit = True
        record.info[_DEFERRED_BEGIN] = True

    @event.listens_for(engine, "before_cursor_execute")
    def _begin_first(conn: Connection, *_args: Any) -> None:
        begin_if_idle(conn)  # errors are wrapped by the execution that triggered this


def begin_if_idle(connection: Connection) -> None:
    """Send BEGIN if ``connection`` is in a SQLAlchemy transaction that the server has not started
    (see ``install_deferred_begin``; does nothing elsewhere, and on SQLite)."""
    if not connection.info.get(_DEFERRED_BEGIN):
        return
    dbapi_connection = connection.connection.dbapi_connection
    if dbapi_connection is None or not dbapi_connection.autocommit:  # not autocommit: psycopg begins
        return
    if dbapi_connection.pgconn.transaction_status != TransactionStatus.IDLE:
        return
    if not connection.in_transaction():
        return
    options = connection.get_execution_options()
    if options.get(READ_ONLY) or options.get("isolation_level") == _AUTOCOMMIT:
        return
    try:
        dbapi_connection.execute(_BEGIN)  # in a pipeline: queued with what follows
    except connection.dialect.loaded_dbapi.Error as exc:
        _raise_wrapped(connection, exc, _BEGIN, None, None)


def install_pipeline_guards(engine: Engine) -> None:
    """Close an ``until_commit`` pipeline before anything but a ``Prepared`` statement or the
    COMMIT runs on its connection: SQLAlchemy's own executions, a ROLLBACK, and the connection's
    return to the pool. The COMMIT itself is queued in the pipeline, which closes with it."""

    @event.listens_for(engine, "before_cursor_execute")
    def _before_execute(conn: Connection, *_args: Any) -> None:
        _close_pipeline(conn.info)  # errors are wrapped by the execution that triggered this

    @event.listens_for(engine, "commit")
    def _commit_in_pipeline(conn: Connection) -> None:
        # psycopg's commit() would sync the pipeline, and leaving it would sync once more: queued
        # behind the statements, the COMMIT goes with the one sync that closes the pipeline. The
        # DBAPI commit() that SQLAlchemy calls next finds the transaction over and does nothing. If
        # a statement failed, the COMMIT is skipped with it and the error is raised here.
        if conn.info.get(_PIPELINE) is None:
            return
        cursor = conn.connection.cursor()
        try:
            cursor.execute("COMMIT")
            _close_pipeline(conn.info)
        except conn.dialect.loaded_dbapi.Error as exc:
            _raise_wrapped(conn, exc, "COMMIT", None, cursor)

    @event.listens_for(engine, "rollback")
    def _before_rollback(conn: Connection) -> None:
        if not conn.invalidated:  # an invalidated connection's DBAPI connection (and pipeline) is gone
            _close_pipeline(conn.info, failed=True)

    @event.listens_for(engine, "reset")
    def _before_reset(_dbapi_connection: Any, record: Any, _state: Any) -> None:
        _close_pipeline(record.info, failed=True)  # after a COMMIT nothing is queued


def _raise_wrapped(connection: Connection, exc: Exception, sql: str, params: Any, cursor: Any) -> None:
    # what Connection.execute does: wrapped in SQLAlchemy's exception classes (IntegrityError,
    # OperationalError …), and a lost connection invalidates the pool
    connection._handle_dbapi_exception(exc, sql, params, cursor, None)


_MISSING = object()


def _row_type(keys: list[str]) -> Any:
    return namedtuple("Row", keys)  # the column names are known only once compiled


M = TypeVar("M")


def loaded_copy(cls: type[M], values: Mapping[str, Any]) -> M:
    """A transient instance of a mapped class holding ``values`` as if they had been loaded: filled
    the way the ORM fills what it loads (straight into the instance's dict, no attribute events),
    at a fraction of the constructor's cost. Never added to a session; its methods and properties
    work as on any instance, and what they change is tracked from there on."""
    mapper = inspect(cls)
    if not mapper.configured:  # what a constructor's first call would do
        configure_mappers()
    instance = cast(M, mapper.class_manager.new_instance())
    instance.__dict__.update(values)
    return instance


def session_connection(session: Session) -> Connection:
    """The session's connection for ``Prepared`` statements, with pending ORM changes flushed first
    (what ``Session.execute`` would have done before running a statement)."""
    session.flush()  # returns at once when nothing is pending
    return session.connection()

class JSONText(ColumnElement[Any]):
    """JSON text computed in SQL, for a JSON column: ``CAST(… AS JSON)`` on PostgreSQL; as it is on
    SQLite, which stores JSON as text (a CAST there would give the text numeric affinity)."""

    type = JSON()
    inherit_cache = True
    _traverse_internals = [("text", InternalTraversal.dp_clauseelement)]

    def __init__(self, text: Any) -> None:
        self.text = text


@compiles(JSONText)  # PostgreSQL's form, also for printing a statement without a dialect
@compiles(JSONText, "postgresql")
def _json_text_pg(element: JSONText, compiler: Any, **kw: Any) -> str:
    return f"CAST({compiler.process(element.text, **kw)} AS JSON)"


@compiles(JSONText, "sqlite")
def _json_text_sqlite(element: JSONText, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.text, **kw))


CHINA_TZ = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def china_iso(moment: dt.datetime) -> str:
    """A time as events and the ERP see it: China time, to the second (``2026-11-26T10:00:00+08:00``)."""
    return moment.astimezone(CHINA_TZ).isoformat(timespec="seconds")


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores naive UTC, returns aware UTC — the same on SQLite (no time zones) and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # pragma: no cover - SQLite raw text from outside the ORM
            value = dt.datetime.fromisoformat(value)
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def current_db() -> Database:
    """The Database of the running app (inside an app context)."""
    from flask import current_app

    return current_app.extensions["renopay.db"]  # type: ignore[no-any-return]
