"""Chat throughput: a 我的账单 push for a customer with 5 bills, under gunicorn (2 workers) and wrk,
against a bare Flask endpoint returning the same XML, in the same run.

    .venv/bin/python -m benchmarks.chat [--seconds 10] [--connections 16] [--rounds 5] [--pg URL]
                                        [--worker-class gthread]

Every request is a new push (a unique MsgId): signature check, XML parse, then the read-only path of
a customer command (no dedup row: it has no effect for one to protect): one statement in a read
snapshot for the sender and their open bills, and the news reply rendered with 5 signed pay links;
the 48-hour window marker is written at most once per 5 minutes. Plaintext mode (the signature
covers the query only, so wrk can vary the body). The baseline is ``POST /bench/bare`` on the same
gunicorn, answering the bytes of a real reply without looking at the request. Workers are not
recycled during a run (``--max-requests 0``: a reboot costs ~1.7 s of CPU and would land in one
side's round). gunicorn.conf.py's ``reuse_port`` gives each worker its own socket, so the kernel
spreads wrk's 16 keep-alive connections over the two (on one shared socket, most often landed on
one worker); each round prints how its connections were spread (from ``ss``), for chat and for bare.
Goal (issue 4): ≥ 0.5 of the baseline's requests/second, p99 ≤ 25 ms at 16 connections.
"""

from __future__ import annotations

import argparse
import os
import re
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
OPENID = "o_bench_customer_0001"
LUA = r"""
local counter = 0
local template = [==[%s]==]
function setup(thread)
  thread:set("tid", math.random(1, 100000))
end
function request()
  counter = counter + 1
  local msgid = string.format("%%d%%09d", tid, counter)
  local body = string.gsub(template, "MSGID", msgid)
  return wrk.format("POST", "%s", {["Content-Type"] = "text/xml"}, body)
end
"""


def wsgi_app() -> Any:
    """The real app plus the baseline route (gunicorn entry point; configured by the environment)."""
    from flask import Response

    from app import create_app

    app = create_app()
    reply_file = Path(os.environ.get("BENCH_REPLY_FILE", "/nonexistent"))

    def bare() -> Response:  # the reply is captured after start-up; read once per worker
        cached = app.extensions.get("bench.reply")
        if cached is None:  # (setdefault's argument would read the file on every request)
            cached = app.extensions.setdefault("bench.reply", reply_file.read_bytes())
        return Response(cached, mimetype="application/xml")

    app.add_url_rule("/bench/bare", "bench_bare", bare, methods=["POST"])
    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare(database_url: str) -> None:
    from db import Database
    from migrations.runner import upgrade
    from payments import services
    from payments.models import BillSource

    upgrade(database_url)
    db = Database.from_url(database_url)
    with db.transaction() as s:
        customer = services.find_or_create_customer(s, name="张三", phone="13800138000")
        customer.openid = OPENID
        for stage, amount in (("定金", 500_000), ("首期款", 3_800_000), ("中期款", 3_000_000),
                              ("尾款", 1_200_000), ("增项", 88_800)):
            services.issue_bill(s, customer=customer, amount_fen=amount, title=f"水电改造 {stage}",
                                stage=stage, source=BillSource.chat, max_fen=100_000_000, open_now=True)
    db.dispose()


def _serve(env: dict[str, str], port: int, worker_class: str) -> subprocess.Popen[bytes]:
    cmd = [str(ROOT / ".venv/bin/gunicorn"), "-w", "2", "-k", worker_class, "--threads", "4",
           "--graceful-timeout", "3", "--max-requests", "0", "-b", f"127.0.0.1:{port}",
           "--log-level", "warning",
           "benchmarks.chat:wsgi_app()"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("gunicorn did not come up")


def _split(port: int) -> str:
    """How the load generator's connections are spread over the gunicorn workers, e.g. ``16/0``:
    read from ``ss`` (which process holds each established server-side connection)."""
    try:
        out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    per_pid: dict[str, int] = {}
    for pid in re.findall(r"pid=(\d+)", out):
        per_pid[pid] = per_pid.get(pid, 0) + 1
    counts = [*sorted(per_pid.values(), reverse=True), 0, 0]
    return f"{counts[0]}/{counts[1]}" if per_pid else "?"


def _wrk(url: str, path: str, body_template: str, seconds: int, connections: int,
         tmp: Path) -> dict[str, Any]:
    script = tmp / f"wrk{secrets.token_hex(3)}.lua"
    script.write_text(LUA % (body_template, path))
    proc = subprocess.Popen(["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency",
                             "-s", str(script), url], stdout=subprocess.PIPE, text=True)
    time.sleep(min(2.0, seconds / 2))
    split = _split(int(url.rsplit(":", 1)[1]))
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"wrk failed ({proc.returncode})")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    factor = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99[2]]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p99_ms": float(p99[1]) * factor, "non2xx": float(errors[1]) if errors else 0.0,
            "split": split}


def run(database_url: str, seconds: int, connections: int, worker_class: str,
        rounds_n: int = 3) -> dict[str, Any]:
    from sandbox import keys
    from sandbox import push_client as pc

    with tempfile.TemporaryDirectory(prefix="renopay-bench-chat-") as tmpdir:
        tmp = Path(tmpdir)
        creds = keys.ensure(tmp / "sandbox")
        if database_url == "sqlite":
            database_url = f"sqlite:///{tmp / 'bench.sqlite3'}"
        _prepare(database_url)
        port = _free_port()
        reply_file = tmp / "reply.xml"
        env = {**os.environ, "DATABASE_URL": database_url, "RENOPAY_INSTANCE_PATH": str(tmp),
               "RENOPAY_SCHEDULER": "0", "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
               "SECRET_KEY": "bench-secret-" + "x" * 32, "BENCH_REPLY_FILE": str(reply_file)}
        client = pc.PushClient(f"http://127.0.0.1:{port}/wechat", creds.token, creds.app_id,
                               creds.encoding_aes_key, creds.original_id, mode="plaintext")
        query = client.signed_query(OPENID)
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        template = pc.text_message(creds.original_id, OPENID, "我的账单", msg_id=1).xml().replace(
            "<MsgId>1</MsgId>", "<MsgId>MSGID</MsgId>")
        proc = _serve(env, port, worker_class)
        try:
            first = client.push(pc.text_message(creds.original_id, OPENID, "我的账单"))
            assert first.reply is not None and first.reply["ArticleCount"] == "5", first.as_dict()
            reply_file.write_bytes(first.body)
            base = f"http://127.0.0.1:{port}"
            _wrk(base, f"/bench/bare?{qs}", template, 1, connections, tmp)  # warm up both workers
            rounds = []
            for _ in range(rounds_n):  # interleaved, so a neighbour's load spike hits both sides alike
                chat = _wrk(base, f"/wechat?{qs}", template, seconds, connections, tmp)
                bare = _wrk(base, f"/bench/bare?{qs}", template, seconds, connections, tmp)
                rounds.append((chat, bare))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
    return _summary(rounds)


def _summary(rounds: list[tuple[dict[str, float], dict[str, float]]]) -> dict[str, Any]:
    """Medians over the rounds, plus each round's ratio (the spread)."""
    ratios = [c["rps"] / b["rps"] for c, b in rounds]
    chat, bare = [c for c, _ in rounds], [b for _, b in rounds]
    return {"chat_rps": median(c["rps"] for c in chat), "chat_p99_ms": median(c["p99_ms"] for c in chat),
            "chat_non2xx": sum(c["non2xx"] for c in chat), "bare_rps": median(b["rps"] for b in bare),
            "bare_p99_ms": median(b["p99_ms"] for b in bare), "ratio": median(ratios), "ratios": ratios,
            "chat_p99s": [c["p99_ms"] for c in chat],
            "splits": [f"{c['split']} vs {b['split']}" for c, b in rounds]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--pg", default=None, help="also run on this PostgreSQL server URL (a scratch DB)")
    parser.add_argument("--worker-class", default="gthread", choices=["sync", "gthread"])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved chat/bare rounds (medians)")
    args = parser.parse_args()
    targets = [("sqlite", "sqlite")]
    if args.pg:
        from tests.fixtures.database import create_pg_database, drop_pg_database

        targets.append(("postgresql", create_pg_database(args.pg)))
    for name, url in targets:
        try:
            r = run(url, args.seconds, args.connections, args.worker_class, args.rounds)
        finally:
            if name == "postgresql":
                drop_pg_database(url)
        print(f"[{name}] gunicorn 2 workers ({args.worker_class}), wrk {args.connections} connections, "
              f"{args.seconds}s: chat {r['chat_rps']:.0f} req/s p99 {r['chat_p99_ms']:.1f} ms "
              f"(non-2xx {r['chat_non2xx']:.0f}); "
              f"bare {r['bare_rps']:.0f} req/s p99 {r['bare_p99_ms']:.1f} ms; "
              f"ratio {r['ratio']:.2f} (goal ≥ 0.5, p99 ≤ 25 ms); medians of {args.rounds} interleaved "
              f"rounds: ratios {' '.join(f'{x:.2f}' for x in r['ratios'])}, "
              f"chat p99 {' '.join(f'{x:.0f}' for x in r['chat_p99s'])} ms; connections per worker "
              f"(chat vs bare): {', '.join(r['splits'])}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
