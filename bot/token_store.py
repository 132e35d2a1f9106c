"""The shared access token in the database, for deployments without Redis.

Several gunicorn workers and the scheduler worker read one row; a refresh happens under a lock that
spans processes (a PostgreSQL advisory lock; on SQLite, whose embedded deployments run one process,
a process-wide lock), and the refresher re-reads the row under that lock before fetching — so a
40001 seen by many workers at once costs one fetch, and nobody invalidates anybody else's token.
"""

from __future__ import annotations

import contextlib
import threading
import zlib
from collections.abc import Iterator

from sqlalchemy import Float, String, select, text
from sqlalchemy.orm import Mapped, mapped_column

from bot.tokens import StoredToken
from db import Base, Database


class WeChatToken(Base):
    __tablename__ = "wechat_tokens"

    key: Mapped[str] = mapped_column(String(96), primary_key=True)
    value: Mapped[str] = mapped_column(String(512))
    expires_at: Mapped[float] = mapped_column(Float)


_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


class DatabaseRefreshLock:
    def __init__(self, database: Database, name: str) -> None:
        self.database = database
        self.name = name

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if self.database.is_sqlite:
            with _process_locks_guard:
                lock = _process_locks.setdefault(self.name, threading.Lock())
            with lock:
                yield
            return
        key = zlib.crc32(self.name.encode())  # advisory locks take a bigint; a stable hash will do
        with self.database.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()


class DatabaseTokenStore:
    def __init__(self, database: Database, app_id: str, kind: str = "access_token") -> None:
        self.database = database
        self.key = f"{app_id}:{kind}"

    def get(self) -> StoredToken | None:
        with self.database.transaction() as session:
            row = session.execute(select(WeChatToken).where(WeChatToken.key == self.key)).scalar_one_or_none()
            if row is None:
                return None
            token = StoredToken(row.value, row.expires_at)
        return token if token.remaining() > 0 else None

    def set(self, token: str, expires_at: float) -> None:
        with self.database.transaction() as session:
            row = session.get(WeChatToken, self.key)
            if row is None:
                session.add(WeChatToken(key=self.key, value=token, expires_at=expires_at))
            else:
                row.value, row.expires_at = token, expires_at

    def lock(self) -> DatabaseRefreshLock:
        return DatabaseRefreshLock(self.database, f"renopay:wechat-token:{self.key}")
