"""Counters shared through Redis (observability.Counters): counting costs no round trip, every
process's counts add up at a scrape, a Redis outage delays counts without losing them, and a forked
child never writes its parent's counts a second time."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from observability import Counters
from tests.fixtures.database import redis_reachable, require_or_skip

REDIS_URL = os.environ.get("RENOPAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens on port 1: every command fails at once
REQUESTS = "renopay_http_requests_total"


@pytest.fixture
def namespace() -> Iterator[str]:
    import redis

    reason = redis_reachable(REDIS_URL)
    if reason:  # CI starts Redis and sets the flag: there this fails
        require_or_skip(reason, "RENOPAY_REQUIRE_REDIS")
    name = f"test-{uuid.uuid4().hex}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(f"renopay:metrics:{name}")
    client.close()


def _stored(namespace: str) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        return {k.decode(): int(v) for k, v in client.hgetall(f"renopay:metrics:{namespace}").items()}
    finally:
        client.close()


def _field(route: str, status: str = "200") -> str:
    labels = [["method", "GET"], ["route", route], ["status", status]]
    return json.dumps([REQUESTS, labels], ensure_ascii=False)


def _count(counters: Counters, route: str) -> int:
    return counters.snapshot().get((REQUESTS, (("method", "GET"), ("route", route), ("status", "200"))), 0)


class _CountingRedis:
    """A Redis client that counts the round trips made through it."""

    def __init__(self, real: Any) -> None:
        self.real, self.round_trips = real, 0

    def pipeline(self, **kwargs: Any) -> Any:
        self.round_trips += 1
        return self.real.pipeline(**kwargs)

    def __getattr__(self, name: str) -> Any:
        self.round_trips += 1
        return getattr(self.real, name)


def test_counting_makes_no_round_trip_and_one_flush_writes_everything(namespace: str) -> None:
    counters = Counters(REDIS_URL, namespace, flush_every=3600)  # the thread flushes once, at the start
    counters.inc(REQUESTS, method="GET", route="/warm", status="200")
    deadline = time.monotonic() + 5
    while not _stored(namespace) and time.monotonic() < deadline:  # the background thread's first flush
        time.sleep(0.01)
    assert _stored(namespace) == {_field("/warm"): 1}
    counting = _CountingRedis(counters._redis)
    counters._redis = counting
    for _ in range(500):
        counters.inc(REQUESTS, method="GET", route="/healthz", status="200")
    counters.inc(REQUESTS, 2, status="404", route="/x", method="GET")  # label order does not matter
    assert counting.round_trips == 0 and _stored(namespace) == {_field("/warm"): 1}
    assert counters.flush() is True
    assert counting.round_trips == 1  # one MULTI … EXEC
    assert _stored(namespace) == {_field("/warm"): 1, _field("/healthz"): 500, _field("/x", "404"): 2}


def test_the_background_thread_flushes_without_being_asked(namespace: str) -> None:
    counters = Counters(REDIS_URL, namespace, flush_every=0.05)
    counters.inc(REQUESTS, method="GET", route="/a", status="200")
    time.sleep(0.2)  # past the first flush: the next counts wait for the thread's next turn
    counters.inc(REQUESTS, 3, method="GET", route="/a", status="200")
    deadline = time.monotonic() + 5
    while _stored(namespace).get(_field("/a")) != 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _stored(namespace) == {_field("/a"): 4}


def test_processes_add_up_at_a_scrape_and_the_fields_keep_their_format(namespace: str) -> None:
    """Two workers (two Counters on one hash) and counts an earlier version wrote (HINCRBY on the
    same field text): a scrape in either worker shows the sum."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.hincrby(f"renopay:metrics:{namespace}", _field("/pay"), 10)  # written before the upgrade
    client.close()
    first = Counters(REDIS_URL, namespace, flush_every=3600)
    second = Counters(REDIS_URL, namespace, flush_every=3600)
    first.inc(REQUESTS, method="GET", route="/pay", status="200")
    for _ in range(4):
        second.inc(REQUESTS, method="GET", route="/pay", status="200")
    second.flush()
    assert _count(first, "/pay") == 15  # its own count flushed by the scrape itself
    assert _count(second, "/pay") == 15


def test_a_redis_outage_delays_counts_and_loses_none(namespace: str) -> None:
    import redis

    counters = Counters(NOWHERE, namespace, flush_every=3600)
    for _ in range(7):
        counters.inc(REQUESTS, method="GET", route="/down", status="200")
    assert counters.flush() is False
    assert _count(counters, "/down") == 7  # a scrape during the outage shows this process's counts
    counters._redis = redis.Redis.from_url(REDIS_URL)  # Redis is back
    counters.inc(REQUESTS, method="GET", route="/down", status="200")
    assert counters.flush() is True
    assert _stored(namespace) == {_field("/down"): 8}
    assert counters.flush() is True and _stored(namespace) == {_field("/down"): 8}  # nothing twice


def _fork_and_count(counters: Counters) -> None:
    """Fork a child that counts one request and flushes; fail if it hangs or its flush fails."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            counters.inc(REQUESTS, method="GET", route="/child", status="200")
            code = 0 if counters.flush() else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 10
    while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    if waited[0] == 0:  # stuck on a lock copied from the parent
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung counting and flushing")
    assert os.waitstatus_to_exitcode(waited[1]) == 0


def test_a_forked_child_does_not_write_its_parents_counts(namespace: str) -> None:
    counters = Counters(REDIS_URL, namespace, flush_every=3600)
    for _ in range(3):
        counters.inc(REQUESTS, method="GET", route="/fork", status="200")
    _fork_and_count(counters)
    counters.flush()
    stored = _stored(namespace)
    assert stored[_field("/child")] == 1
    assert stored[_field("/fork")] == 3  # once: the parent's three, never six


def test_forks_while_the_flusher_talks_to_redis(namespace: str) -> None:
    """A fork in the middle of a flush: the Redis client's locks, copied held into the child, hung
    the child's first Redis call about one fork in ten (redis-py re-initialises its pool there under
    them). Forks now wait for the call in flight."""
    counters = Counters(REDIS_URL, namespace, flush_every=0.0005)  # the flusher is nearly always busy
    stop = threading.Event()

    def count() -> None:  # keeps every flush non-empty
        while not stop.is_set():
            counters.inc(REQUESTS, method="GET", route="/busy", status="200")
            time.sleep(0.0002)

    counter = threading.Thread(target=count)
    counter.start()
    try:
        for _ in range(30):
            _fork_and_count(counters)
    finally:
        stop.set()
        counter.join()
    counters.flush()
    assert _stored(namespace)[_field("/child")] == 30


def test_without_redis_counts_stay_in_the_process() -> None:
    counters = Counters()
    counters.inc(REQUESTS, method="GET", route="/local", status="200")
    counters.inc(REQUESTS, method="GET", route="/local", status="200")
    assert counters.flush() is True
    assert _count(counters, "/local") == 2
