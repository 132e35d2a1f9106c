"""The production shape of the soak test, started on this machine and stopped again.

A throwaway PostgreSQL database, a private Redis database number (only ``renopay:*`` keys touched),
both stand-ins as their own processes, gunicorn with 2 workers (``gunicorn.conf.py``), exactly one
``flask --app app worker``, all on 127.0.0.1. Every process runs in its own process group and is
killed by group on ``stop()``, whatever happened before.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.fixtures.database import create_pg_database, drop_pg_database

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
ERP_SECRET = "soak-erp-webhook-secret-0123456789"
ERP_API_KEY = "soak-erp-api-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up within {timeout:.0f} s")


def clear_redis(url: str, app_id: str) -> int:
    """Delete this run's keys only (token and metrics keys carry the sandbox account's app id), so
    another RenoPay sharing the Redis — or a second soak — is left alone."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        keys = list(client.scan_iter(f"renopay:*{app_id}*", count=500))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


@dataclass
class Proc:
    name: str
    cmd: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None


@dataclass
class Stack:
    pg_server: str
    redis_url: str
    retry_scale: float = 0.02
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="renopay-soak-")))
    procs: dict[str, Proc] = field(default_factory=dict)
    database_url: str = ""
    app_id: str = ""
    web_port: int = 0
    pay_port: int = 0
    wx_port: int = 0
    erp_url: str = ""

    # ------------------------------------------------------------------ addresses

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def pay(self) -> str:
        return f"http://127.0.0.1:{self.pay_port}"

    @property
    def wx(self) -> str:
        return f"http://127.0.0.1:{self.wx_port}"

    @property
    def instance(self) -> Path:
        return self.tmp / "instance"

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RENOPAY_", "WECHAT", "ERP_"))}
        return {
            **keep,
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "SECRET_KEY": "soak-secret-" + "k" * 40,
            "PUBLIC_BASE_URL": self.web,
            "RENOPAY_SANDBOX": "1",
            "RENOPAY_INSTANCE_PATH": str(self.instance),
            "RENOPAY_SCHEDULER": "0",
            "WECHAT_API_BASE": self.wx,
            "WECHAT_OAUTH_BASE": self.wx,
            "WECHATPAY_API_BASE": self.pay,
            "ERP_WEBHOOK_URL": self.erp_url,
            "ERP_WEBHOOK_SECRET": ERP_SECRET,
            "ERP_API_KEY": ERP_API_KEY,
            "GUNICORN_BIND": f"127.0.0.1:{self.web_port}",
            "GUNICORN_WORKERS": "2",
            "GUNICORN_LOGLEVEL": "warning",
        }

    # ------------------------------------------------------------------ lifecycle

    def start(self, erp_url: str) -> Any:
        """Database, Redis keys, credentials, migrations, stand-ins, web, worker. Returns credentials."""
        from sandbox import keys

        self.erp_url = erp_url
        self.web_port, self.pay_port, self.wx_port = free_port(), free_port(), free_port()
        self.database_url = create_pg_database(self.pg_server, prefix="renopay_soak_")
        creds = keys.ensure(self.instance / "sandbox")
        self.app_id = creds.app_id
        clear_redis(self.redis_url, self.app_id)
        self.run_cli("db", "upgrade")
        py, sandbox_dir = str(BIN / "python"), str(self.instance / "sandbox")
        self.spawn("wechatpay", [py, "-m", "sandbox.wechatpay", "--port", str(self.pay_port),
                                 "--dir", sandbox_dir, "--retry-scale", str(self.retry_scale)])
        self.spawn("wechat_api", [py, "-m", "sandbox.wechat_api", "--port", str(self.wx_port),
                                  "--dir", sandbox_dir, "--push-target", f"{self.web}/wechat"])
        self.spawn("web", [str(BIN / "gunicorn"), "app:create_app()"])
        self.spawn("worker", [str(BIN / "flask"), "--app", "app", "worker"])
        wait_http(f"{self.pay}/_control/config")
        wait_http(f"{self.wx}/_control/state")
        wait_http(f"{self.web}/healthz")
        return creds

    def spawn(self, name: str, cmd: list[str]) -> Proc:
        proc = self.procs.get(name) or Proc(name, cmd, self.tmp / "logs" / f"{name}.log")
        proc.log.parent.mkdir(parents=True, exist_ok=True)
        with proc.log.open("ab") as log:
            proc.popen = subprocess.Popen(cmd, cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        return proc

    def run_cli(self, *args: str, timeout: float = 120.0) -> str:
        done = subprocess.run([str(BIN / "flask"), "--app", "app", *args], cwd=ROOT, env=self.env(),
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"flask {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return done.stdout

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.popen is not None and proc.popen.poll() is None

    def kill9(self, name: str) -> int:
        """``kill -9`` the process itself (not its group). Returns the pid."""
        proc = self.procs[name]
        assert proc.popen is not None
        os.kill(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(timeout=10)
        return proc.popen.pid

    def restart(self, name: str) -> int:
        self._stop_group(self.procs[name])
        popen = self.spawn(name, self.procs[name].cmd).popen
        assert popen is not None
        return popen.pid

    def web_workers(self) -> list[int]:
        """The pids of gunicorn's worker processes (children of the master)."""
        master = self.procs["web"].popen
        assert master is not None
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill9_web_worker(self) -> int:
        pids = self.web_workers()
        if not pids:
            raise RuntimeError("gunicorn has no workers")
        os.kill(pids[0], signal.SIGKILL)
        return pids[0]

    def _stop_group(self, proc: Proc) -> None:
        popen = proc.popen
        if popen is None:
            return
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(popen.pid, sig)
            except ProcessLookupError:
                pass  # the group is gone already (a kill -9'd worker that was not restarted)
            try:
                popen.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with_children = popen.pid
        try:  # a kill -9'd leader leaves its group behind; make sure nothing of it lingers
            os.killpg(with_children, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self, *, keep_files: bool = False) -> None:
        for name in ("worker", "web", "wechat_api", "wechatpay"):
            if name in self.procs:
                self._stop_group(self.procs[name])
        if self.database_url:
            try:
                drop_pg_database(self.database_url)
            except Exception as exc:  # report, but keep stopping the rest
                print(f"soak: could not drop {self.database_url}: {exc}")
        try:
            if self.app_id:
                clear_redis(self.redis_url, self.app_id)
        except Exception as exc:
            print(f"soak: could not clear Redis keys: {exc}")
        if not keep_files:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def log_tail(self, name: str, lines: int = 30) -> str:
        proc = self.procs.get(name)
        if proc is None or not proc.log.exists():
            return ""
        return "\n".join(proc.log.read_text(errors="replace").splitlines()[-lines:])
