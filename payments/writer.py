"""SQLite under gunicorn: one process that writes the payment notifications of every worker.

On a SQLite file every write transaction is serialised by one lock. When each gunicorn worker writes
its own notifications, the lock passes between processes, each batch holds only what one worker
gathered, every hand-off starts on a cold page cache, and the lock's holder shares its GIL with the
worker's other request threads — it waits for the GIL after each statement. Here the workers verify
and decrypt as before, then hand the stored-and-applied unit of a payment notification to this
process over a Unix socket. It runs everything queued from all workers in one transaction of the
group commit (``Database.batch_gathered``: each unit again alone if any fails), syncs the WAL in a
thread of its own while the next batch runs, and only then answers each with its outcome. Measured
under the benchmark: the workers' CPU per notification halves and the notify rate rises 9–16%
(docs/payments.md, "Benchmark").

gunicorn.conf.py starts it with the master (``start_writer``) and stops it on exit. A worker finds
it by the socket next to the database (``socket_path``). When there is no writer, or it fails or
stalls, the worker applies the notification in-process, as without it (``apply_via_writer`` returns
``None``; the master starts a writer that died again, after 1 s and backing off to 60 s). That is
safe because the unit is idempotent: a payment is applied once per transaction_id, and the raw
notification is upserted.
The socket is bound under umask 077, so only its user can connect, and that user can already write
the database. Messages: a 4-byte big-endian length, then UTF-8 JSON.

    python -m payments.writer DATABASE_URL      (what ``start_writer`` runs)
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from db import sqlite_file
from payments.notifications import RawNotification

log = logging.getLogger("renopay.payments.writer")

MAX_MESSAGE = 1 << 20  # a notification is a few KB; anything larger is not ours
MAX_BATCH = 32
REPLY_TIMEOUT = 2.0  # s: then the worker applies it itself (WeChat wants an answer within 5 s)
RETRY_AFTER = 30.0  # s: after a failure, workers go in-process for this long before trying again
RESTART_AFTER = (1.0, 60.0)  # s: a dead writer is started again after the first, backing off to the second
STABLE_AFTER = 60.0  # s: a writer that ran this long before dying is started again after RESTART_AFTER[0]
_HEADER = struct.Struct("!I")
_SOCKET_PATH_LIMIT = 100  # sun_path holds 108 bytes on Linux, 104 on macOS


@functools.lru_cache(maxsize=8)  # asked once per notification, of the same database
def socket_path(database: str) -> str:
    """Next to the database file, or — when that path is too long for a socket — in a directory of the
    user's own under the temporary directory, named after the file."""
    beside = f"{database}-writer.sock"
    if len(beside.encode()) <= _SOCKET_PATH_LIMIT:
        return beside
    name = hashlib.sha256(database.encode()).hexdigest()[:24]
    return os.path.join(tempfile.gettempdir(), f"renopay-{os.getuid()}", f"{name}.sock")


def _private_directory(path: str) -> None:
    """The socket's directory exists; under the temporary directory it must be this user's alone."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.path.dirname(directory) != tempfile.gettempdir():
        return  # beside the database: the socket itself is the user's alone (bound under umask 077)
    info = os.stat(directory)
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{directory} is not a private directory of this user")


def _frame(payload: Mapping[str, Any]) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return _HEADER.pack(len(data)) + data


# --- the worker's side ---------------------------------------------------------------------------

class _Client:
    """Per process: one connection per thread; after a failure, none for ``RETRY_AFTER`` seconds."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._local = threading.local()
        self._down_until = 0.0

    def _connection(self, path: str) -> socket.socket | None:
        """This thread's connection to the writer at ``path``; None when there is no socket there."""
        conn: socket.socket | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "path", None) != path:
            if not os.path.exists(path):
                return None
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(REPLY_TIMEOUT)
            try:
                conn.connect(path)
            except OSError:
                conn.close()
                raise
            self._local.conn, self._local.path = conn, path
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def call(self, path: str, message: Mapping[str, Any]) -> dict[str, Any] | None:
        """The writer's answer, or None when there is no writer or it failed (the caller goes
        in-process)."""
        if time.monotonic() < self._down_until:
            return None
        try:
            conn = self._connection(path)
            if conn is None:
                return None
            conn.sendall(_frame(message))
            (size,) = _HEADER.unpack(_receive(conn, _HEADER.size))
            answer: dict[str, Any] = json.loads(_receive(conn, size))
            return answer
        except (OSError, ValueError) as exc:  # refused, gone, stalled, garbled: in-process instead
            self._drop()
            self._down_until = time.monotonic() + RETRY_AFTER
            log.warning("payment writer unavailable (%s: %s); applying in-process for %.0f s",
                        type(exc).__name__, exc, RETRY_AFTER)
            return None


def _receive(conn: socket.socket, size: int) -> bytes:
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes")
    chunks, left = [], size
    while left:
        chunk = conn.recv(left)
        if not chunk:
            raise ConnectionError("the writer closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


_CLIENT = _Client()
os.register_at_fork(after_in_child=lambda: _CLIENT.reset())  # a forked worker opens its own connections


def apply_via_writer(database: str, raw: RawNotification, appid: str, mchid: str) -> str | None:
    """The outcome of a payment notification applied by the writer process of ``database``; None when
    the caller must apply it itself (no writer, or it failed or stalled). A unit that the writer ran
    and that failed raises here, as it would have in-process."""
    answer = _CLIENT.call(socket_path(database), {"raw": vars(raw), "appid": appid, "mchid": mchid})
    if answer is None:
        return None
    if "error" in answer:
        raise WriterUnitFailed(str(answer["error"]))
    return str(answer["outcome"])


class WriterUnitFailed(RuntimeError):
    """The writer ran the unit and it failed (the endpoint answers 500: WeChat retries)."""


# --- the writer's side ---------------------------------------------------------------------------

Unit = Callable[[Any], str]  # a Session → the outcome


def _unit_of(message: Mapping[str, Any]) -> Unit:
    from payments.notify import payment_unit  # the endpoint's own unit: the same code in both places

    raw = RawNotification(**message["raw"])
    return payment_unit(raw, str(message["appid"]), str(message["mchid"]))


class _Peer:
    __slots__ = ("buffer", "closed", "conn")

    def __init__(self, conn: socket.socket) -> None:
        self.conn, self.buffer, self.closed = conn, bytearray(), False

    def messages(self) -> list[dict[str, Any]]:
        """The complete messages received so far; raises ValueError on a malformed one."""
        out = []
        while len(self.buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self.buffer)
            if size > MAX_MESSAGE:
                raise ValueError(f"message of {size} bytes")
            if len(self.buffer) < _HEADER.size + size:
                break
            out.append(json.loads(bytes(self.buffer[_HEADER.size:_HEADER.size + size])))
            del self.buffer[:_HEADER.size + size]
        return out


Answers = list[tuple[_Peer, dict[str, Any]]]


class _Syncer:
    """Flushes the WAL behind the writer's loop: a batch committed while a flush runs is covered by
    the next one (the WAL only grows at its end). Then it answers those batches itself (``answer``):
    handing them back to the loop cost each notification the rest of the loop's current batch
    (measured: 2.4 ms between commit and answer, of which the flush took 0.8)."""

    def __init__(self, db: Any, answer: Callable[[Answers, str | None], None]) -> None:
        self.db, self.answer = db, answer
        self._cond = threading.Condition()
        self._waiting: list[Answers] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="wal-syncer", daemon=True)
        self._thread.start()

    def after(self, answers: Answers) -> None:
        with self._cond:
            self._waiting.append(answers)
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if not self._waiting:
                    return
                batches, self._waiting = self._waiting, []
            failure = None
            try:
                self.db.sync_wal()
            except Exception as exc:  # committed, not known to be on disk
                log.exception("payment writer: WAL sync failed")
                failure = f"{type(exc).__name__}: {exc}"
            for answers in batches:
                try:
                    self.answer(answers, failure)
                except Exception:  # never the thread: the batches after this one still need answers
                    log.exception("payment writer: answering a batch failed")

    def stop(self) -> None:
        """Flush what is waiting, then end."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=10)


class WriterServer:
    """Accepts the workers' connections; runs what they sent, in batches, in one thread."""

    def __init__(self, database_url: str, path: str | None = None) -> None:
        from db import Database

        self.db = Database.from_url(database_url)
        if self.db.file is None:
            self.db.dispose()
            raise ValueError("the payment writer is for a SQLite database file")
        self.path = path or socket_path(self.db.file)
        self._stop = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        # The syncer's thread sends the answers while the loop reads and drops connections: a
        # connection is closed (and its file descriptor free for reuse) only under this lock.
        self._sockets = threading.Lock()
        self._syncer = _Syncer(self.db, self._answer_synced)
        self.batches = self.units = 0

    def bind(self) -> None:
        _private_directory(self.path)
        if os.path.exists(self.path):
            os.unlink(self.path)  # a writer that died left it; ours replaces it
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            listener.bind(self.path)
        finally:
            os.umask(old)
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ)

    def stop(self) -> None:
        self._stop.set()

    def serve(self, *, parent: int | None = None) -> None:
        """Until ``stop`` (or the parent process is gone): gather, run, answer."""
        if self._listener is None:
            self.bind()
        try:
            while not self._stop.is_set():
                if parent is not None and os.getppid() != parent:
                    log.warning("payment writer: gunicorn's master is gone; stopping")
                    break
                self._round(self._selector.select(timeout=0.5))
        finally:
            self._close()

    def _round(self, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        gathered: list[tuple[_Peer, dict[str, Any]]] = []
        for key, _ in ready:
            if key.fileobj is self._listener:
                self._accept()
                continue
            peer: _Peer = key.data
            try:
                data = peer.conn.recv(1 << 16)
                if not data:
                    raise ConnectionError("closed")
                peer.buffer += data
                gathered.extend((peer, message) for message in peer.messages())
            except BlockingIOError:
                continue
            except (OSError, ValueError):
                self._forget(peer)
        for start in range(0, len(gathered), MAX_BATCH):
            self._run(gathered[start:start + MAX_BATCH])

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()  # type: ignore[union-attr]
        except BlockingIOError:
            return
        conn.setblocking(False)
        self._selector.register(conn, selectors.EVENT_READ, _Peer(conn))

    def _forget(self, peer: _Peer) -> None:
        with self._sockets:
            peer.closed = True
            try:
                self._selector.unregister(peer.conn)
            except (KeyError, ValueError):
                pass
            peer.conn.close()

    def _run(self, gathered: list[tuple[_Peer, dict[str, Any]]]) -> None:
        """Commit the batch; the syncer flushes the WAL and answers (``_answer_synced``) while the
        next batch runs."""
        units: list[tuple[_Peer, Unit | None, str | None]] = []
        for peer, message in gathered:
            try:
                units.append((peer, _unit_of(message), None))
            except (KeyError, TypeError, ValueError) as exc:
                units.append((peer, None, f"malformed message ({type(exc).__name__})"))
        runnable = [unit for _, unit, _ in units if unit is not None]
        outcomes = iter(self.db.batch_gathered(runnable) if runnable else ())
        self.batches, self.units = self.batches + 1, self.units + len(units)
        answers: list[tuple[_Peer, dict[str, Any]]] = []
        for peer, unit, refusal in units:
            if unit is None:
                answers.append((peer, {"error": refusal}))
                continue
            result, error = next(outcomes)
            if error is not None:
                log.warning("payment writer: unit failed (%s: %s)", type(error).__name__, error)
                answers.append((peer, {"error": f"{type(error).__name__}: {error}"}))
            else:
                answers.append((peer, {"outcome": result}))
        self._syncer.after(answers)

    def _answer_synced(self, answers: Answers, failure: str | None) -> None:
        """The syncer's thread: answer a batch whose commit it has flushed (or failed to: then each
        gets an error — nothing is known to be durable, so nobody is told done; WeChat retries)."""
        for peer, answer in answers:
            if failure is not None and "outcome" in answer:
                answer = {"error": f"the WAL was not synced ({failure})"}
            self._answer(peer, answer)

    def _answer(self, peer: _Peer, answer: Mapping[str, Any]) -> None:
        """A few bytes on a connection whose worker is waiting for them. One that cannot take them at
        once has stopped reading: it is shut down, and the loop drops it when it reads its end."""
        data = _frame(answer)
        with self._sockets:
            if peer.closed:
                return
            try:
                if peer.conn.send(data) != len(data):
                    raise BlockingIOError("short send")
            except OSError:
                try:
                    peer.conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _close(self) -> None:
        self._syncer.stop()  # what was committed is flushed and answered before the connections close
        with self._sockets:
            for key in list(self._selector.get_map().values()):
                if isinstance(key.data, _Peer):
                    key.data.closed = True
                key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.db.dispose()


class WriterProcess:
    """The writer as a child process (started by gunicorn's master). One that dies is started again
    (``launch``) after RESTART_AFTER[0] seconds, twice as long each time it dies again within
    STABLE_AFTER seconds of its start, up to RESTART_AFTER[1]; meanwhile the workers apply in-process."""

    def __init__(self, process: subprocess.Popen[bytes], path: str,
                 launch: Callable[[], subprocess.Popen[bytes] | None]) -> None:
        self.process, self.path = process, path
        self.restarts = 0
        self._launch = launch
        self._stopping = threading.Event()
        self._starting = threading.Lock()  # a writer started while stop() runs is stopped too
        threading.Thread(target=self._watch, name="payment-writer-watch", daemon=True).start()

    def _watch(self) -> None:
        delay, started = RESTART_AFTER[0], time.monotonic()
        while True:
            code = self.process.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started > STABLE_AFTER:
                delay = RESTART_AFTER[0]
            log.warning("payment writer (pid %d) is gone (exit %s); starting it again in %.0f s",
                        self.process.pid, code, delay)
            if self._stopping.wait(delay):
                return
            with self._starting:
                if self._stopping.is_set():
                    return
                process = self._launch()
                started = time.monotonic()
                if process is not None:
                    self.process, self.restarts = process, self.restarts + 1
            delay = min(delay * 2, RESTART_AFTER[1])

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with self._starting:
            process = self.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def start_writer(database_url: str, *, timeout: float = 15.0) -> WriterProcess | None:
    """Start the writer for ``database_url`` if it is a SQLite file and RENOPAY_PAYMENT_WRITER is not
    "0"; returns once it accepts connections (None otherwise, or if it did not come up — the workers
    then apply in-process). It is started again whenever it dies (``WriterProcess``)."""
    database = sqlite_file(database_url)
    if database is None or os.environ.get("RENOPAY_PAYMENT_WRITER", "1") == "0":
        return None
    path = socket_path(database)
    launch = functools.partial(_launch, database, path, os.getpid(), timeout)
    process = launch()
    return None if process is None else WriterProcess(process, path, launch)


def _launch(database: str, path: str, parent: int, timeout: float) -> subprocess.Popen[bytes] | None:
    """The writer process, once it accepts connections at ``path``; None if it did not come up."""
    root = Path(__file__).resolve().parents[1]
    absolute = f"sqlite:///{database}"  # the workers resolve a relative path from this directory, not root
    command = [sys.executable, "-m", "payments.writer", absolute, str(parent)]
    process = subprocess.Popen(command, cwd=root)  # noqa: S603 - our interpreter, our module, our arguments
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(path)
            log.info("payment writer started (pid %d)", process.pid)
            return process
        except OSError:
            time.sleep(0.05)
    log.warning("payment writer did not start; workers apply notifications in-process")
    if process.poll() is None:
        process.kill()
        process.wait()
    return None


def main(argv: list[str]) -> None:
    from observability import configure_logging

    configure_logging(os.environ.get("RENOPAY_LOG_LEVEL", "INFO"))
    database_url, parent = argv[0], int(argv[1]) if len(argv) > 1 else None
    server = WriterServer(database_url)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    signal.signal(signal.SIGINT, lambda *_: server.stop())
    server.bind()
    server.serve(parent=parent)


if __name__ == "__main__":
    main(sys.argv[1:])
