"""Notification throughput under gunicorn, against a bare endpoint in the same run; QR render timing.

    .venv/bin/python -m benchmarks.notify [--count 1500] [--rounds 5] [--workers 2] [--clients 8] [--pg URL]
                                          [--databases sqlite,postgresql] [--no-qr]

For each database (SQLite, and PostgreSQL when reachable) it migrates a throwaway database, opens
``count`` bills each with a Native attempt, starts gunicorn on ``benchmarks.notify:wsgi_app()`` and
posts, from separate client processes, one correctly signed TRANSACTION.SUCCESS per attempt: every
request is verified, decrypted, stored raw, applied under the bill's row lock and committed. The
baseline is ``POST /bench/bare`` on the same gunicorn (same app, same workers, same bodies), which
answers 204 without looking at the body. gunicorn runs with the production settings of gunicorn.conf.py
(gthread, its threads) for both, except that workers are not recycled (``max_requests``) during a run.
Rounds alternate bare and notify (fresh orders each round); printed: the medians, each round's ratio
(goal: ≥ 0.4), and — on Linux — the workers' CPU per request (all of the master's children: on SQLite
that includes the payment writer, payments/writer.py; on PostgreSQL the database's own processes come
on top) and the machine's idle cores in each phase: what a ratio is made of, since the
client processes share the cores (docs/payments.md, "Benchmark"). On a shared VM a burst of CPU steal
can halve one side of a round, so rounds are long (1,500 notifications: 1–2 s of bare, 3–4 s of notify)
and there are five of them; the medians are what to compare. Then the QR image: first render vs cached,
per image.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def wsgi_app() -> Any:
    """The real app plus the baseline route (gunicorn entry point; configured by the environment)."""
    from flask import Response

    from app import create_app

    app = create_app()
    app.add_url_rule("/bench/bare", "bench_bare", lambda: Response(status=204), methods=["POST"])
    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Usage:
    """Linux: CPU seconds used by gunicorn's workers, and the machine's idle seconds (/proc), so that
    each phase also reports where the time went. Elsewhere every figure is NaN."""

    def __init__(self, master_pid: int) -> None:
        self.master_pid = master_pid
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def _workers(self) -> list[int]:
        """The master's children, whichever of its threads started them (a payment writer that was
        started again comes from the master's watcher thread)."""
        pids: list[int] = []
        try:
            for task in os.listdir(f"/proc/{self.master_pid}/task"):
                with open(f"/proc/{self.master_pid}/task/{task}/children") as f:
                    pids += (int(pid) for pid in f.read().split())
        except OSError:
            pass
        return pids

    def sample(self) -> tuple[float, float]:
        """(CPU seconds of the current workers, idle seconds of the machine)."""
        try:
            busy = 0
            for pid in self._workers():
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                busy += int(fields[11]) + int(fields[12])  # utime + stime
            with open("/proc/stat") as f:
                idle = int(f.readline().split()[4])
        except (OSError, ValueError, IndexError):
            return float("nan"), float("nan")
        return busy / self.hz, idle / self.hz


def _prepare(database_url: str, instance: Path, count: int) -> list[tuple[str, int]]:
    """Migrate, then open ``count`` bills with one Native attempt each; returns (out_trade_no, amount)."""
    from db import Database
    from migrations.runner import upgrade
    from payments import services
    from payments.models import BillSource, Channel

    upgrade(database_url)
    db = Database.from_url(database_url)
    out: list[tuple[str, int]] = []
    try:
        for i in range(count):
            amount = 100_000 + i
            with db.transaction() as s:
                customer = services.find_or_create_customer(s, name="压测客户", phone=f"139{i:08d}")
                bill = services.issue_bill(
                    s,
                    customer=customer,
                    amount_fen=amount,
                    title="压测",
                    stage="其他",
                    source=BillSource.erp,
                    max_fen=100_000_000,
                    open_now=True,
                )
                start = services.start_attempt(s, bill.id, channel=Channel.native)
                services.record_order_created(
                    s, start.attempt.id, code_url=f"weixin://wxpay/bizpayurl?pr={i}"
                )
                out.append((start.attempt.out_trade_no, amount))
    finally:
        db.dispose()
    return out


def _bodies(instance: Path, attempts: list[tuple[str, int]]) -> list[tuple[dict[str, str], bytes]]:
    from sandbox import keys
    from tests.fixtures.payments import make_signer

    creds = keys.load(instance / "sandbox")
    sign = make_signer(creds)
    signed = []
    for out_trade_no, amount in attempts:
        resource = {
            "appid": creds.app_id,
            "mchid": creds.mch_id,
            "out_trade_no": out_trade_no,
            "transaction_id": "4200" + secrets.token_hex(12)[:24],
            "trade_type": "NATIVE",
            "trade_state": "SUCCESS",
            "success_time": "2026-11-26T10:00:00+08:00",
            "payer": {"openid": "o_bench"},
            "amount": {"total": amount, "payer_total": amount, "currency": "CNY"},
        }
        signed.append(sign(resource))
    return signed


def _client(url: str, jobs: list[tuple[dict[str, str], bytes]], ready: Any, go: Any, results: Any) -> None:
    session = requests.Session()
    bad = 0
    ready.put(1)
    go.wait()
    for headers, body in jobs:
        status = session.post(url, data=body, headers=headers, timeout=30).status_code
        bad += status not in (200, 204)
    results.put(bad)


def _load(
    url: str, jobs: list[tuple[dict[str, str], bytes]], clients: int, usage: _Usage | None = None
) -> tuple[float, int, float, float]:
    """Post every job from ``clients`` processes; returns (requests per second, non-2xx answers, the
    workers' CPU ms per request, the machine's idle cores; the last two NaN without ``usage``). The
    clock starts once every client process is up and waiting (process start-up is not timed)."""
    ready, results, go = mp.Queue(), mp.Queue(), mp.Event()
    chunks = [jobs[i::clients] for i in range(clients)]
    procs = [mp.Process(target=_client, args=(url, chunk, ready, go, results)) for chunk in chunks]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get()
    nothing = (float("nan"), float("nan"))
    cpu0, idle0 = usage.sample() if usage else nothing
    started = time.perf_counter()
    go.set()
    bad = sum(results.get() for _ in procs)
    elapsed = time.perf_counter() - started
    cpu1, idle1 = usage.sample() if usage else nothing
    for p in procs:
        p.join()
    return len(jobs) / elapsed, bad, (cpu1 - cpu0) * 1000 / len(jobs), (idle1 - idle0) / elapsed


def _serve(env: dict[str, str], port: int, workers: int) -> subprocess.Popen[bytes]:
    cmd = [
        str(ROOT / ".venv/bin/gunicorn"),
        "-w",
        str(workers),
        "-b",
        f"127.0.0.1:{port}",
        "--max-requests",  # no worker recycling mid-round (a reboot costs ~1.7 s of CPU, to one side only)
        "0",
        "--log-level",
        "warning",
        "benchmarks.notify:wsgi_app()",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("gunicorn did not start")


def run(label: str, database_url: str, args: argparse.Namespace) -> float:
    """Interleaved rounds (bare, then notify, on fresh orders each round) so that load from elsewhere on
    the machine hits both sides alike; prints each round's ratio and returns the median."""
    from sandbox import keys

    instance = Path(tempfile.mkdtemp(prefix="renopay-bench-"))
    keys.generate(instance / "sandbox")
    attempts = _prepare(database_url, instance, args.count * args.rounds)
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "RENOPAY_INSTANCE_PATH": str(instance),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "RENOPAY_SCHEDULER": "0",
        "RENOPAY_SANDBOX": "1",
    }
    env.pop("WECHAT_APP_ID", None)
    server = _serve(env, port, args.workers)
    usage = _Usage(server.pid)
    rounds: list[tuple[float, float, int, int]] = []
    spent: list[tuple[float, float, float, float]] = []  # worker ms/request and idle cores: bare, notify
    try:
        base = f"http://127.0.0.1:{port}"
        warm = _bodies(instance, attempts[:50])
        _load(f"{base}/bench/bare", warm, args.clients)  # warm up every worker
        for n in range(args.rounds):
            jobs = _bodies(instance, attempts[n * args.count:(n + 1) * args.count])  # signed just now
            bare, bare_bad, bare_ms, bare_idle = _load(f"{base}/bench/bare", jobs, args.clients, usage)
            notify, notify_bad, notify_ms, notify_idle = _load(
                f"{base}/payments/wechatpay/notify", jobs, args.clients, usage
            )
            rounds.append((bare, notify, bare_bad, notify_bad))
            spent.append((bare_ms, notify_ms, bare_idle, notify_idle))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    ratios = [notify / bare for bare, notify, _, _ in rounds]
    ratio = median(ratios)
    print(
        f"{label:10s} bare {median(r[0] for r in rounds):8.0f} req/s   "
        f"notify {median(r[1] for r in rounds):8.0f} req/s   ratio {ratio:.2f} (goal ≥ 0.4)   "
        f"rounds: {' '.join(f'{x:.2f}' for x in ratios)}   (non-2xx: bare {sum(r[2] for r in rounds)}, "
        f"notify {sum(r[3] for r in rounds)}; {args.count} notifications a round, {args.workers} workers "
        f"× gunicorn.conf.py threads, {args.clients} clients)"
    )
    bare_ms, notify_ms, bare_idle, notify_idle = (median(s[i] for s in spent) for i in range(4))
    print(
        f"{'':10s} worker CPU per request: bare {bare_ms:.2f} ms, notify {notify_ms:.2f} ms; "
        f"idle cores: bare {bare_idle:.2f}, notify {notify_idle:.2f} of {os.cpu_count()} (medians)"
    )
    _check_applied(database_url, args.count * args.rounds)
    return ratio


def _check_applied(database_url: str, count: int) -> None:
    from sqlalchemy import func, select

    from db import Database
    from payments.models import Payment

    db = Database.from_url(database_url)
    with db.transaction() as s:
        payments = s.scalar(select(func.count()).select_from(Payment))
    db.dispose()
    if payments != count:
        raise SystemExit(f"expected {count} payments, found {payments}")


def qr_timing(samples: int = 200) -> None:
    from payments.qr import qr_png

    urls = [f"weixin://wxpay/bizpayurl?pr={secrets.token_urlsafe(9)}" for _ in range(samples)]
    started = time.perf_counter()
    for url in urls:
        qr_png(url)
    first = (time.perf_counter() - started) / samples
    started = time.perf_counter()
    for _ in range(10):
        for url in urls:
            qr_png(url)
    cached = (time.perf_counter() - started) / (samples * 10)
    print(
        f"QR image   first render {first * 1000:.2f} ms   cached {cached * 1e6:.2f} µs   "
        f"ratio first/cached {first / cached:.0f}×"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=2, help="production: gunicorn.conf.py's default")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved bare/notify rounds (median)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--pg", default=os.environ.get("RENOPAY_TEST_PG_URL", DEFAULT_PG))
    parser.add_argument("--databases", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql")
    parser.add_argument("--no-qr", action="store_true", help="skip the QR image timing")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if "sqlite" in args.databases:
        with tempfile.TemporaryDirectory() as tmp:
            run("SQLite", f"sqlite:///{tmp}/bench.sqlite3", args)
    from tests.fixtures.database import create_pg_database, drop_pg_database, pg_reachable

    reason = pg_reachable(args.pg) if "postgresql" in args.databases else "not asked for"
    if reason:
        print(f"PostgreSQL skipped: {reason}")
    else:
        url = create_pg_database(args.pg)
        try:
            run("PostgreSQL", url, args)
        finally:
            drop_pg_database(url)
    if not args.no_qr:
        qr_timing()


if __name__ == "__main__":
    main()
