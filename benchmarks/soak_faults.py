"""The soak's fault schedule and its /metrics sampler.

Faults are placed at fractions of the traffic phase so a short run sees the same kinds as a long one:
the ERP refusing connections, answering 500, answering too slowly; WeChat Pay answering 500 and 429
(orders and refunds); every Official Account token invalidated; ``kill -9`` of the worker (restarted)
and of one gunicorn worker (gunicorn respawns it).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from benchmarks.soak_erp import ErpReceiver
from benchmarks.soak_stack import Stack

_DEPTH = re.compile(r'^renopay_outbox_depth\{subscriber="(\w+)",status="pending"\} ([0-9.]+)$', re.M)


@dataclass
class Fault:
    at: float  # fraction of the traffic phase
    name: str
    start: Callable[[], str]
    seconds: float = 0.0  # how long it lasts (0: a one-off)
    end: Callable[[], str] | None = None


@dataclass
class FaultLog:
    started: float = field(default_factory=time.monotonic)
    entries: list[tuple[float, str]] = field(default_factory=list)
    erp_down: list[tuple[float, float]] = field(default_factory=list)  # (from, to) offsets, refused

    def note(self, text: str) -> None:
        self.entries.append((time.monotonic() - self.started, text))


def post(url: str, body: dict[str, Any] | None = None) -> str:
    resp = requests.post(url, json=body or {}, timeout=10)
    return f"{resp.status_code}"


def kill_worker(stack: Stack, idle: Callable[[], bool] | None) -> str:
    """``kill -9`` the worker; with ``idle``, first wait (≤ 5 s) for a moment between relay batches, so a
    short run need not wait out the 120 s lease of a batch the dead worker had claimed."""
    deadline = time.monotonic() + 5
    while idle is not None and not idle() and time.monotonic() < deadline:
        time.sleep(0.05)
    return f"pid {stack.kill9('worker')}" + (" (between relay batches)" if idle is not None else "")


def schedule(stack: Stack, erp: ErpReceiver, seconds: float, *, reduced: bool,
             idle: Callable[[], bool] | None = None) -> list[Fault]:
    pay, wx = stack.pay + "/_control", stack.wx + "/_control"
    gentle = idle if reduced else None
    outage = max(6.0, seconds * 0.1)
    short = max(4.0, seconds * 0.04)

    def erp_mode(mode: str) -> Callable[[], str]:
        return lambda: (erp.set_mode(mode), f"ERP {mode}")[1]

    def restart_worker() -> str:
        return f"worker restarted (pid {stack.restart('worker')})"

    faults = [
        Fault(0.10, "ERP down (connection refused)", erp_mode("refuse"), outage, erp_mode("ok")),
        Fault(0.30, "WeChat Pay 500 x3 on orders", lambda: post(f"{pay}/faults/api", {
            "kind": "error500", "count": 3, "path_prefix": "/v3/pay/transactions"})),
        Fault(0.33, "WeChat Pay 429 x3 on orders", lambda: post(f"{pay}/faults/api", {
            "kind": "error429", "count": 3, "path_prefix": "/v3/pay/transactions"})),
        Fault(0.38, "Official Account tokens invalidated", lambda: post(f"{wx}/token/invalidate")),
        Fault(0.42, "kill -9 worker", lambda: kill_worker(stack, gentle), 3.0, restart_worker),
        Fault(0.50, "kill -9 one gunicorn worker", lambda: f"pid {stack.kill9_web_worker()}"),
        Fault(0.55, "ERP answers 500", erp_mode("error"), short, erp_mode("ok")),
        Fault(0.75, "Official Account tokens invalidated", lambda: post(f"{wx}/token/invalidate")),
        Fault(0.78, "kill -9 worker", lambda: kill_worker(stack, gentle), 3.0, restart_worker),
        Fault(0.82, "kill -9 one gunicorn worker", lambda: f"pid {stack.kill9_web_worker()}"),
    ]
    if not reduced:  # slow answers and refund faults need minutes to heal (timeouts, refund backoff)
        faults += [
            Fault(0.62, "ERP answers after 11 s (timeouts)", erp_mode("slow"), short, erp_mode("ok")),
            Fault(0.45, "WeChat Pay 500 after processing a refund", lambda: post(f"{pay}/faults/api", {
                "kind": "error500", "count": 1, "path_prefix": "/v3/refund", "after": True})),
            Fault(0.66, "WeChat Pay 429 x2 on refunds", lambda: post(f"{pay}/faults/api", {
                "kind": "error429", "count": 2, "path_prefix": "/v3/refund"})),
        ]
    return sorted(faults, key=lambda f: f.at)


def run_faults(faults: list[Fault], seconds: float, stop: threading.Event, log: FaultLog) -> None:
    """Fire each fault at its time (and end it after its duration); bounded by the traffic phase."""
    pending: list[tuple[float, str, Callable[[], str], Fault]] = [
        (f.at * seconds, "start", f.start, f) for f in faults
    ]
    while pending and not stop.is_set():
        pending.sort(key=lambda p: p[0])
        when, what, action, fault = pending[0]
        if stop.wait(max(0.0, when - (time.monotonic() - log.started))):
            break
        pending.pop(0)
        try:
            result = action()
        except Exception as exc:  # a fault that could not be injected is reported, not fatal
            result = f"FAILED: {type(exc).__name__}: {exc}"
        log.note(f"{fault.name}: {what} ({result})")
        if what == "start" and fault.end is not None:
            pending.append((when + fault.seconds, "end", fault.end, fault))
        if fault.name.startswith("ERP down"):
            offset = time.monotonic() - log.started
            if what == "start":
                log.erp_down.append((offset, float("inf")))
            elif log.erp_down:
                log.erp_down[-1] = (log.erp_down[-1][0], offset)


# ------------------------------------------------------------------------------------------ metrics


@dataclass
class Sample:
    t: float
    erp_pending: int
    notices_pending: int


def outbox_pending(web: str) -> dict[str, int] | None:
    try:
        body = requests.get(f"{web}/metrics", timeout=5).text
    except requests.RequestException:
        return None
    return {name: int(float(value)) for name, value in _DEPTH.findall(body)}


def sample_metrics(web: str, stop: threading.Event, log: FaultLog, out: list[Sample], every: float) -> None:
    while not stop.wait(every):
        depth = outbox_pending(web)
        if depth is not None:
            out.append(Sample(time.monotonic() - log.started, depth.get("erp", 0), depth.get("notices", 0)))
