"""Access-token (and jsapi-ticket) store shared by all processes, and the one refresher that writes it.

Readers (:class:`bot.client.WeChatApiClient`) only *read* the store. Fetching goes through
:class:`TokenRefresher`, under a lock (a Redis lock on Redis, a threading lock in memory), and a
refresher that finds the store already holding a token newer than the one that failed does not fetch
again — so several web workers hitting 40001 at once cause one fetch, not a storm in which each fetch
invalidates the token the others just got.

The store interface is deliberately tiny (``get`` / ``set``) so that a database-backed store can be
added without touching readers or the refresher.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

REFRESH_MARGIN = 300.0  # refresh ahead when less than 5 minutes remain (a superseded token lives 5 more)


@dataclass(frozen=True)
class StoredToken:
    value: str
    expires_at: float  # unix seconds

    def remaining(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)


@dataclass(frozen=True)
class FetchedToken:
    value: str
    expires_in: int


class TokenStore(Protocol):
    """Where the current token lives. ``get`` returns None when there is none or it has expired."""

    def get(self) -> StoredToken | None: ...

    def set(self, token: str, expires_at: float) -> None: ...


class RefreshLock(Protocol):
    def hold(self) -> contextlib.AbstractContextManager[None]: ...


# ----------------------------------------------------------------------------------------- stores


class MemoryTokenStore:
    """One process only (tests, sandbox, a single gunicorn worker)."""

    def __init__(self) -> None:
        self._value: StoredToken | None = None
        self._lock = threading.Lock()
        self._refresh_lock = ThreadingRefreshLock()

    def get(self) -> StoredToken | None:
        with self._lock:
            tok = self._value
        if tok is None or tok.remaining() <= 0:
            return None
        return tok

    def set(self, token: str, expires_at: float) -> None:
        with self._lock:
            self._value = StoredToken(token, expires_at)

    def lock(self) -> RefreshLock:
        """The refresh lock shared by every refresher of this store."""
        return self._refresh_lock


class RedisTokenStore:
    """Shared by every process: key ``<prefix>:<app_id>:<kind>`` = ``"<expires_at> <token>"``, with a TTL."""

    def __init__(self, redis: Any, app_id: str, kind: str = "access_token",
                 prefix: str = "renopay:wechat") -> None:
        self.redis = redis
        self.key = f"{prefix}:{app_id}:{kind}"

    @classmethod
    def from_url(cls, url: str, app_id: str, kind: str = "access_token", prefix: str = "renopay:wechat",
                 timeout: float = 5.0) -> RedisTokenStore:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        return cls(client, app_id, kind, prefix)

    def get(self) -> StoredToken | None:
        raw = self.redis.get(self.key)
        if not raw:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        expires, _, value = text.partition(" ")
        try:
            tok = StoredToken(value, float(expires))
        except ValueError:
            return None
        return tok if value and tok.remaining() > 0 else None

    def set(self, token: str, expires_at: float) -> None:
        ttl = max(1, int(expires_at - time.time()))
        self.redis.set(self.key, f"{expires_at:.3f} {token}", ex=ttl)

    def lock(self, timeout: float = 30.0, blocking_timeout: float = 15.0) -> RefreshLock:
        return RedisRefreshLock(self.redis, self.key + ":lock", timeout, blocking_timeout)


# ------------------------------------------------------------------------------------------ locks


class RefreshLockTimeout(Exception):
    """Another process held the refresh lock for too long."""


class ThreadingRefreshLock:
    def __init__(self, timeout: float = 15.0) -> None:
        self._lock = threading.Lock()
        self._timeout = timeout

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if not self._lock.acquire(timeout=self._timeout):
            raise RefreshLockTimeout("token refresh lock busy")
        try:
            yield
        finally:
            self._lock.release()


class RedisRefreshLock:
    """``redis-py``'s Lock: expires on its own if the holder dies (``timeout``)."""

    def __init__(self, redis: Any, name: str, timeout: float = 30.0, blocking_timeout: float = 15.0) -> None:
        self._lock = redis.lock(name, timeout=timeout, blocking_timeout=blocking_timeout)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if not self._lock.acquire():
            raise RefreshLockTimeout("token refresh lock busy")
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # lock expired meanwhile: nothing to release
                self._lock.release()


# -------------------------------------------------------------------------------------- refresher


class TokenRefresher:
    """Fetches a token with ``fetch`` (stable_token or token; see :mod:`bot.client`) and writes the store.

    ``fetch(force_refresh)`` returns a :class:`FetchedToken`; ``force_refresh`` is True when the current
    token was reported invalid (stable_token would otherwise hand the same one back).
    """

    def __init__(self, store: TokenStore, fetch: Callable[[bool], FetchedToken],
                 lock: RefreshLock | None = None, *, margin: float = REFRESH_MARGIN) -> None:
        self.store = store
        self.fetch = fetch
        if lock is None:
            make_lock = getattr(store, "lock", None)
            lock = make_lock() if callable(make_lock) else ThreadingRefreshLock()
        self.lock: RefreshLock = lock
        self.margin = margin
        self.fetches = 0  # how many times this refresher called ``fetch``

    def current(self) -> str:
        """The stored token, fetching one only when the store is empty."""
        tok = self.store.get()
        if tok is not None:
            return tok.value
        return self.refresh()

    def refresh(self, stale: str | None = None) -> str:
        """Replace ``stale`` (a token that just failed), or fill an empty store. Fetches at most once.

        Under the lock, a stored token different from ``stale`` means someone else already refreshed:
        use it and do not fetch (a fetch would invalidate it for everyone else).
        """
        with self.lock.hold():
            tok = self.store.get()
            if tok is not None and tok.value != stale:
                return tok.value
            return self._fetch_and_store(force=stale is not None)

    def refresh_if_due(self) -> bool:
        """The scheduled job: fetch when the token is missing or expires within ``margin``.

        Returns True when it fetched. An existing token is replaced with ``force_refresh`` (stable_token
        would otherwise return the same, nearly expired one); the old one keeps working 5 more minutes.
        """
        with self.lock.hold():
            tok = self.store.get()
            if tok is not None and tok.remaining() > self.margin:
                return False
            self._fetch_and_store(force=tok is not None)
            return True

    def _fetch_and_store(self, *, force: bool) -> str:
        self.fetches += 1
        got = self.fetch(force)
        self.store.set(got.value, time.time() + got.expires_in)
        return got.value
