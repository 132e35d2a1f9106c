"""Engine and session factory (built in create_app, never at import), Base and naming convention.

SQLite is the embedded default; it has no row locks, so every transaction starts with
``BEGIN IMMEDIATE``: writers are serialised by the database file lock, which gives the same
"one transition at a time per bill" guarantee that ``SELECT … FOR UPDATE`` gives on PostgreSQL.
Writers queue for that lock on a kernel lock first (``WriterLock``), not in SQLite's busy handler.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event, text
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

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


def normalise_url(url: str) -> str:
    """Prefer psycopg 3 for plain ``postgresql://`` URLs."""
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def build_engine(url: str, **kwargs: Any) -> Engine:
    url = normalise_url(url)
    if not is_sqlite(url):
        kwargs.setdefault("pool_pre_ping", True)
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        return create_engine(url, **kwargs)

    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    if not database or database == ":memory:":
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
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Readers (Database.read) take a deferred BEGIN: a consistent WAL snapshot, no write lock.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

    return engine


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
        _WRITER_LOCKS.add(self)

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


_WRITER_LOCKS: weakref.WeakSet[WriterLock] = weakref.WeakSet()


def _reset_writer_locks_after_fork() -> None:
    for lock in list(_WRITER_LOCKS):
        lock._reset()


os.register_at_fork(after_in_child=_reset_writer_locks_after_fork)


@dataclass
class Database:
    engine: Engine
    session_factory: sessionmaker[Session]
    writer_lock: WriterLock | None = None

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Database:
        engine = build_engine(url, **kwargs)
        database = make_url(engine.url).database if engine.dialect.name == "sqlite" else None
        lock = WriterLock(f"{database}-writer.lock") if database and database != ":memory:" else None
        return cls(engine, sessionmaker(engine, expire_on_commit=False), lock)

    @cached_property
    def _read_engine(self) -> Engine:
        return self.engine.execution_options(**{READ_ONLY: True})  # same pool, deferred BEGIN on SQLite

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only unit: one consistent snapshot, always rolled back, never a write lock (SQLite
        readers start with a deferred BEGIN, so they don't queue behind writers; nothing to commit)."""
        session = self.session_factory(bind=self._read_engine)
        try:
            yield session
        finally:
            session.close()  # ends the snapshot: the pool rolls the connection back on return

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Unit of work: commits when the block succeeds, rolls back otherwise. On a SQLite file,
        the block runs holding the writer lock (keep anything slow, like HTTP, outside it)."""
        if self.writer_lock is None:
            yield from self._unit_of_work()
            return
        with self.writer_lock.held():
            yield from self._unit_of_work()

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

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


CHINA_TZ = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
