"""Soak test of the production shape: mixed traffic and faults for N minutes, then the books.

    python benchmarks/soak.py --minutes 10 [--pg URL] [--redis URL] [--reduced] [--keep]

Starts on 127.0.0.1: a throwaway PostgreSQL database (migrated with ``flask --app app db upgrade``),
Redis (its own database number; only ``renopay:*`` keys are touched), the WeChat Pay and Official
Account stand-ins as processes, gunicorn with 2 workers (``gunicorn.conf.py``), exactly one
``flask --app app worker`` and a signature-verifying ERP receiver. Drives chat, ERP API bills,
payments (Native and JSAPI, partial, duplicate and forged notifications) and refunds while injecting
faults (benchmarks/soak_faults.py), then quiesces (faults cleared, ``payments recover`` once, outbox
and refunds drained) and checks the books (benchmarks/soak_books.py). Exits 1 when any check fails.
Everything it starts is stopped (by process group) on success, failure or Ctrl-C.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run with the project's virtualenv whatever "python" was
    VENV_PY = ROOT / ".venv" / "bin" / "python"
    if VENV_PY.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        os.execv(str(VENV_PY), [str(VENV_PY), *sys.argv])
    sys.path[0] = str(ROOT)  # not benchmarks/: its erp_sync.py would shadow the erp_sync package

import argparse  # noqa: E402 - after the interpreter switch above
import datetime as dt  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import requests  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from benchmarks import soak_faults, soak_pay, soak_report, soak_traffic  # noqa: E402
from benchmarks.soak_books import Check, audit  # noqa: E402
from benchmarks.soak_erp import ErpReceiver  # noqa: E402
from benchmarks.soak_stack import ERP_SECRET, Stack, free_port  # noqa: E402
from benchmarks.soak_traffic import Person, World  # noqa: E402

SURNAMES = "赵钱孙李周吴郑王冯陈褚卫蒋沈韩杨"


def seed(stack: Stack, creds: Any, customers: int) -> World:
    """Customers and staff bound to WeChat users that follow the account at the stand-in."""
    from db import Database
    from payments import services
    from payments.models import Staff, StaffRole

    people = [Person(f"{SURNAMES[i % 16]}{'一二三四五六七八九十'[i % 10]}{i}", f"1390000{i:04d}",
                     f"oSoakCustomer{i:04d}") for i in range(customers)]
    sales, finance = ["oSoakSales0001", "oSoakSales0002"], "oSoakFinance0001"
    database = Database.from_url(stack.database_url)
    try:
        with database.transaction() as s:
            for p in people:
                services.find_or_create_customer(s, name=p.name, phone=p.phone).openid = p.openid
            for i, openid in enumerate(sales):
                s.add(Staff(name=f"销售{i + 1}", role=StaffRole.sales, openid=openid, active=True))
            s.add(Staff(name="王会计", role=StaffRole.finance, openid=finance, active=True))
    finally:
        database.dispose()
    for openid in [p.openid for p in people] + sales + [finance]:
        requests.post(f"{stack.wx}/_control/users", json={"openid": openid, "wrote_recently": True},
                      timeout=10)
    return World(stack.web, stack.pay, stack.wx, creds, people, sales, finance)


def actors(world: World, engine: Engine, reduced: bool) -> list[Callable[[], None]]:
    found: list[Callable[[], None]] = [
        lambda: soak_traffic.erp_bills(world),
        lambda: soak_traffic.chat_staff_bills(world),
        lambda: soak_traffic.chat_customers(world),
        lambda: soak_pay.payer(world, engine),
        lambda: soak_pay.forger(world),
        lambda: soak_pay.refunder(world),
    ]
    if not reduced:
        found += [lambda: soak_pay.payer(world, engine), lambda: soak_traffic.chat_customers(world)]
    return found


def start_threads(targets: list[Callable[[], None]]) -> list[threading.Thread]:
    threads = [threading.Thread(target=t, daemon=True, name=f"soak-{i}") for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    return threads


def wait_until(predicate: Callable[[], bool], timeout: float, every: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def settled(stack: Stack, engine: Engine, *, refunds: bool = True) -> bool:
    """No notification on its way, no pending delivery (and, with ``refunds``, no refund in flight)."""
    notes = requests.get(f"{stack.pay}/_control/notifications", timeout=10).json()
    moving = [n for n in notes["notifications"] if n["state"] in ("sending", "held")]
    in_flight = "(SELECT count(*) FROM refunds WHERE status IN ('pending', 'processing'))" if refunds else "0"
    with engine.connect() as conn:
        pending = "(SELECT count(*) FROM outbox_deliveries WHERE status = 'pending')"
        busy = conn.execute(text(f"SELECT {pending} + {in_flight}")).scalar_one()
    return not moving and not busy


def lease_left(engine: Engine) -> float:
    """Seconds until the last lease on a pending delivery expires (0 when none is leased)."""
    with engine.connect() as conn:
        until = conn.execute(text("SELECT max(lease_expires_at) FROM outbox_deliveries "
                                  "WHERE status = 'pending' AND lease_owner IS NOT NULL")).scalar_one()
    if until is None:
        return 0.0
    until = until if until.tzinfo else until.replace(tzinfo=dt.UTC)
    return max(0.0, (until - dt.datetime.now(dt.UTC)).total_seconds())


def quiesce(stack: Stack, erp: ErpReceiver, engine: Engine, timeout: float) -> list[Check]:
    """Clear every fault, let the worker drain, run ``payments recover`` once, wait for the rest."""
    requests.delete(f"{stack.pay}/_control/faults/api", timeout=10)
    requests.delete(f"{stack.pay}/_control/faults/notifications", timeout=10)
    requests.post(f"{stack.wx}/_control/faults", json={"clear": True, "reject_tokens": False}, timeout=10)
    erp.set_mode("ok")
    if not stack.alive("worker"):
        stack.restart("worker")
    wait_until(lambda: settled(stack, engine, refunds=False), timeout / 2)
    recover = stack.run_cli("payments", "recover").strip().splitlines()
    print(f"\n== flask --app app payments recover: {recover[-1] if recover else '(no output)'}")
    drained = wait_until(lambda: settled(stack, engine), timeout)
    held = lease_left(engine)
    if not drained and held > 0:  # a kill -9'd worker's batch is re-sent only when its lease expires
        print(f"soak: deliveries leased by a killed worker; waiting {held:.0f} s for the lease to expire")
        drained = wait_until(lambda: settled(stack, engine), held + 30)
    return [Check("quiesced: notifications delivered, outbox and refunds drained", drained,
                  f"within {timeout:.0f} s")]


def shape_checks(stack: Stack, world: World, log: soak_faults.FaultLog) -> list[Check]:
    counters = requests.get(f"{stack.wx}/_control/counters", timeout=10).json()
    invalidations = sum("tokens invalidated" in t for _, t in log.entries)
    fetched = counters.get("stable_token_issued", 0) + counters.get("token_fetches", 0)
    print(f"\n== Official Account stand-in counters: {counters}")
    forged = dict(world.forged_answers)
    return [
        Check("token fetches at the minimum (1 + one per invalidation; no 40001 storm)",
              1 <= fetched <= 1 + invalidations
              and counters.get("stable_token_calls", 0) <= 1 + invalidations,
              f"issued {fetched}, stable_token calls {counters.get('stable_token_calls')}, "
              f"invalidations {invalidations}, rejections {counters.get('token_rejections')}"),
        Check("forged notifications all refused with 401", bool(forged) and set(forged) == {401},
              f"{forged}"),
        Check("gunicorn respawned its workers (2 running)", len(stack.web_workers()) == 2,
              f"workers {stack.web_workers()}"),
        Check("every fault was injected", not any("FAILED" in t for _, t in log.entries),
              f"{len(log.entries)} fault events"),
    ]


def run(args: argparse.Namespace) -> int:
    seconds = args.minutes * 60
    stack = Stack(args.pg, args.redis, retry_scale=args.retry_scale)
    erp = ErpReceiver(ERP_SECRET, free_port())
    world: World | None = None
    engine: Engine | None = None
    passed = False
    began = time.monotonic()
    phases: dict[str, float] = {}
    try:
        erp.start()
        creds = stack.start(erp.url)
        print(f"soak: web {stack.web}, WeChat Pay {stack.pay}, Official Account {stack.wx}, ERP {erp.url}, "
              f"database {stack.database_url.rsplit('/', 1)[-1]}, files {stack.tmp}", flush=True)
        phases["start-up"] = time.monotonic() - began
        engine = create_engine(stack.database_url, pool_size=4)
        world = seed(stack, creds, customers=12)
        log, samples = soak_faults.FaultLog(), []
        sampler_stop = threading.Event()
        threads = start_threads(actors(world, engine, args.reduced))
        start_threads([lambda: soak_faults.sample_metrics(stack.web, sampler_stop, log, samples, 1.0)])
        faults = soak_faults.schedule(stack, erp, seconds, reduced=args.reduced,
                                      idle=lambda: lease_left(engine) == 0)
        fault_thread = start_threads([lambda: soak_faults.run_faults(faults, seconds, world.stop, log)])[0]
        print(f"soak: traffic for {seconds:.0f} s with {len(threads)} actors and {len(faults)} faults",
              flush=True)
        world.stop.wait(seconds)
        world.stop.set()
        for thread in [*threads, fault_thread]:
            thread.join(timeout=40)
        quiet_from = time.monotonic()
        checks = quiesce(stack, erp, engine, timeout=args.quiesce)
        phases["quiesce"] = time.monotonic() - quiet_from
        time.sleep(2.5)  # one more /metrics sample after the drain
        sampler_stop.set()
        books = audit(engine, stack.pay, stack.wx, erp)
        metrics = requests.get(f"{stack.web}/metrics", timeout=10).text
        soak_report.print_requests(metrics, world.stats, seconds)
        soak_report.print_families(metrics)
        soak_report.print_faults(log)
        soak_report.print_series(samples, log)
        checks += shape_checks(stack, world, log) + soak_report.series_checks(samples, log)
        soak_report.print_books(books, checks)
        passed = books.passed and all(c.ok for c in checks)
        print(f"\nSOAK {'PASSED' if passed else 'FAILED'}: {args.minutes:g} min, "
              f"{sum(1 for c in [*books.checks, *checks] if c.ok)}/{len(books.checks) + len(checks)} checks "
              f"(start-up {phases['start-up']:.0f} s, quiesce {phases['quiesce']:.0f} s, "
              f"total {time.monotonic() - began:.0f} s)")
    except KeyboardInterrupt:
        print("\nsoak: interrupted, stopping everything")
    except Exception as exc:
        print(f"\nsoak: error {type(exc).__name__}: {exc}")
        for name in ("web", "worker"):
            print(f"--- {name} log (tail) ---\n{stack.log_tail(name)}")
        raise
    finally:
        if world is not None:
            world.stop.set()
        erp.stop()
        if engine is not None:
            engine.dispose()
        keep = args.keep or not passed
        stack.stop(keep_files=keep)
        if keep:
            print(f"soak: logs kept in {stack.tmp / 'logs'}")
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="traffic phase length")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="PostgreSQL server (a throwaway database is created and dropped)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14",
                        help="Redis URL with a database number")
    parser.add_argument("--retry-scale", type=float, default=0.02, help="WeChat Pay notification retry scale")
    parser.add_argument("--quiesce", type=float, default=300.0, help="longest wait for the drain (s)")
    parser.add_argument("--reduced", action="store_true", help="fewer actors; no slow-ERP or refund faults")
    parser.add_argument("--keep", action="store_true", help="keep the logs even when passing")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C: clean up the processes
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
