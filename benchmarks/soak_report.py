"""What the soak prints: requests served (by /metrics), p50/p99 per route (as the clients saw them),
the faults injected, the outbox depth series around the ERP outage, token fetches, the three-way
ledger and every check with its verdict."""

from __future__ import annotations

import re
from collections import Counter

from benchmarks.soak_books import Books, Check
from benchmarks.soak_faults import FaultLog, Sample
from benchmarks.soak_traffic import Stats

_REQUESTS = re.compile(
    r'^renopay_http_requests_total\{method="(\w+)",route="([^"]*)",status="(\d+)"\} (\d+)$', re.M)


def served(metrics: str) -> tuple[int, dict[str, Counter[str]]]:
    by_route: dict[str, Counter[str]] = {}
    total = 0
    for method, route, status, count in _REQUESTS.findall(metrics):
        by_route.setdefault(f"{method} {route}", Counter())[status] += int(count)
        total += int(count)
    return total, by_route


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))] if ordered else 0.0


def print_requests(metrics: str, stats: Stats, seconds: float) -> None:
    total, by_route = served(metrics)
    print(f"\n== Requests served by RenoPay (/metrics): {total} in {seconds:.0f} s of traffic "
          f"+ quiesce ({total / max(seconds, 1):.1f}/s)")
    for route, statuses in sorted(by_route.items(), key=lambda kv: -sum(kv[1].values()))[:16]:
        mix = ", ".join(f"{s}×{n}" for s, n in sorted(statuses.items()))
        print(f"  {sum(statuses.values()):6d}  {route:48s} {mix}")
    print("\n== Latency as the clients saw it (ms)")
    print(f"  {'route':52s} {'n':>6s} {'p50':>8s} {'p99':>8s}  answers")
    for route in sorted(stats.latency):
        values = stats.latency[route]
        mix = ", ".join(f"{s}×{n}" for s, n in stats.status[route].most_common(4))
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        print(f"  {route:52s} {len(values):6d} {p50:8.1f} {p99:8.1f}  {mix}")
    print("\n== Traffic")
    for name, count in sorted(stats.events.items()):
        print(f"  {count:6d}  {name}")


def print_families(metrics: str) -> None:
    """The counters issue 10 lists besides requests: notification outcomes, deliveries, job runs."""
    print("\n== /metrics counters: notifications, deliveries by result, job runs")
    for family in ("renopay_wechatpay_notifications_total", "renopay_outbox_deliveries_total",
                   "renopay_job_runs_total"):
        lines = [line for line in metrics.splitlines() if line.startswith(family + "{")]
        print("\n".join(f"  {line}" for line in lines) or f"  (no {family})")


def print_faults(log: FaultLog) -> None:
    print("\n== Faults injected (seconds from the start of traffic)")
    for at, text in log.entries:
        print(f"  +{at:6.1f}s  {text}")


def print_series(samples: list[Sample], log: FaultLog) -> None:
    print("\n== /metrics renopay_outbox_depth{status=\"pending\"} — erp (notices) around the ERP outage")
    if not log.erp_down or not samples:
        print("  (no samples)")
        return
    start, end = log.erp_down[0]
    window = [s for s in samples if start - 4 <= s.t <= (end if end != float("inf") else start) + 90]
    step = max(1, len(window) // 40)
    for s in window[::step]:
        mark = "ERP down" if start <= s.t <= end else ""
        print(f"  +{s.t:6.1f}s  erp {s.erp_pending:4d}  (notices {s.notices_pending:3d})  {mark}")
    last = samples[-1]
    print(f"  … final +{last.t:6.1f}s  erp {last.erp_pending}  (notices {last.notices_pending})")


def series_checks(samples: list[Sample], log: FaultLog) -> list[Check]:
    if not log.erp_down or not samples:
        return [Check("outbox depth sampled around an ERP outage", False, "no outage or no samples")]
    start, end = log.erp_down[0]
    before = [s.erp_pending for s in samples if s.t <= start] or [0]
    during = [s.erp_pending for s in samples if start <= s.t <= end] or [0]
    after = [s for s in samples if s.t > end]
    back = next((s for s in after if s.erp_pending == 0), None)
    return [
        Check("/metrics erp outbox depth rises while the ERP is down", max(during) > before[-1],
              f"at outage start {before[-1]}, peak during {max(during)}"),
        Check("/metrics erp outbox depth falls back to 0 after the ERP returns", back is not None,
              f"first 0 at +{back.t:.1f}s ({back.t - end:.1f}s after the ERP came back)"
              if back else "never 0"),
    ]


def print_books(books: Books, extra: list[Check]) -> None:
    print("\n== Ledger: WeChat Pay (stand-in) / RenoPay (database) / ERP (receiver)")
    print(f"  {'':10s} {'WeChat Pay':>24s} {'RenoPay':>24s} {'ERP':>24s}")
    for label, a, b, c in books.table:
        print(f"  {label:10s} {a:>24s} {b:>24s} {c:>24s}")
    print("\n== Checks")
    for check in [*books.checks, *extra]:
        print(f"  [{'PASS' if check.ok else 'FAIL'}] {check.name} — {check.detail}")
