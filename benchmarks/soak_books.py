"""The soak's books: what WeChat Pay (the stand-in), RenoPay (the database) and the ERP (the receiver)
each believe happened, and the checks that they agree — 0 lost, 0 doubled.

- every paid order at the stand-in has exactly one Payment, and every WeChat Payment a paid order;
- every Payment that moved a bill has exactly one ``payment.succeeded`` event, delivered once to the
  ERP (by Idempotency-Key), exactly one receipt notice row and exactly one receipt template message
  recorded by the Official Account stand-in;
- counts and sums of payments and of succeeded refunds agree three ways; no refund is left in flight;
  the outbox is empty (nothing pending, nothing dead).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import requests
from sqlalchemy import text
from sqlalchemy.engine import Engine

from benchmarks.soak_erp import ErpReceiver


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Books:
    checks: list[Check] = field(default_factory=list)
    table: list[tuple[str, str, str, str]] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, ok, detail))

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)


def _rows(engine: Engine, sql: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql)).all())


def _our_side(engine: Engine) -> dict[str, Any]:
    payments = _rows(engine, "SELECT p.receipt_no, a.out_trade_no, p.amount_fen, p.excess_fen "
                             "FROM payments p LEFT JOIN payment_attempts a ON a.id = p.attempt_id "
                             "WHERE p.method = 'wechat'")
    refunds = _rows(engine, "SELECT out_refund_no, amount_fen, status FROM refunds")
    events = _rows(engine, "SELECT id, topic, payload FROM outbox_events "
                           "WHERE topic IN ('payment.succeeded', 'refund.succeeded')")
    deliveries = dict(_rows(engine, "SELECT status, count(*) FROM outbox_deliveries GROUP BY status"))
    notices = _rows(engine, "SELECT event_id, status FROM notices WHERE kind = 'payment_succeeded'")
    return {"payments": payments, "refunds": refunds, "events": events, "deliveries": deliveries,
            "notices": notices}


def _payload(raw: Any) -> dict[str, Any]:
    import json

    return raw if isinstance(raw, dict) else json.loads(raw)


def audit(engine: Engine, pay_url: str, wx_url: str, erp: ErpReceiver) -> Books:
    books = Books()
    ours = _our_side(engine)
    ledger = requests.get(f"{pay_url}/_control/ledger", timeout=30).json()
    standin_refunds = requests.get(f"{pay_url}/_control/refunds", timeout=30).json()
    templates = requests.get(f"{wx_url}/_control/templates", timeout=30).json()
    received = erp.snapshot()

    _payments_match(books, ledger, ours["payments"])
    _receipts(books, ours, templates, received)
    _three_way(books, ledger, standin_refunds, ours, received)
    deliveries = ours["deliveries"]
    books.check("outbox drained (no pending, no dead deliveries)",
                not deliveries.get("pending") and not deliveries.get("dead"),
                f"deliveries by status {deliveries}")
    in_flight = Counter(r.status for r in ours["refunds"]
                        if r.status in ("pending", "processing", "abnormal"))
    books.check("no refund left in flight", not in_flight, f"{dict(in_flight)}")
    books.check("ERP receiver: every request signed, key = event id",
                erp.bad_signatures == 0 and erp.key_mismatches == 0,
                f"bad signatures {erp.bad_signatures}, key mismatches {erp.key_mismatches}, "
                f"re-sends deduplicated {erp.resent()}")
    return books


def _payments_match(books: Books, ledger: list[dict[str, Any]], payments: list[Any]) -> None:
    by_order = Counter(p.out_trade_no for p in payments)
    paid_orders = {row["out_trade_no"] for row in ledger}
    lost = sorted(no for no in paid_orders if by_order[no] == 0)
    doubled = sorted(no for no, n in by_order.items() if n > 1)
    unknown = sorted(no for no in by_order if no not in paid_orders)
    books.check("every paid order at WeChat Pay has exactly one Payment", not lost and not doubled,
                f"{len(paid_orders)} paid orders; lost {len(lost)} {lost[:5]}; "
                f"doubled {len(doubled)} {doubled[:5]}")
    books.check("every WeChat Payment is a paid order at WeChat Pay", not unknown, f"unknown {unknown[:5]}")


def _receipts(books: Books, ours: dict[str, Any], templates: list[dict[str, Any]],
              received: list[dict[str, Any]]) -> None:
    applied = [p for p in ours["payments"] if p.amount_fen > p.excess_fen]
    events_by_receipt: Counter[str] = Counter()
    event_ids: dict[str, str] = {}
    for event_id, topic, raw in ours["events"]:
        if topic == "payment.succeeded":
            receipt = _payload(raw)["data"]["payment"]["receipt_no"]
            events_by_receipt[receipt] += 1
            event_ids[receipt] = event_id
    notices = Counter(event_id for event_id, status in ours["notices"]
                      if status in ("sent", "delivered", "fallback_sent"))
    sends = Counter(str((m["data"].get("character_string3") or {}).get("value")) for m in templates
                    if m["template_id"].endswith("payment_succeeded"))
    at_erp = Counter(e["data"]["payment"]["receipt_no"] for e in received if e["type"] == "payment.succeeded")

    def bad(counter: Counter[str], by_event: bool = False) -> list[str]:
        key = (lambda r: event_ids.get(r, "")) if by_event else (lambda r: r)
        return sorted(p.receipt_no for p in applied if counter[key(p.receipt_no)] != 1)

    books.check("every Payment has exactly one payment.succeeded event", not bad(events_by_receipt),
                f"{len(applied)} payments; off {bad(events_by_receipt)[:5]}")
    books.check("every Payment has exactly one receipt notice (notices table)", not bad(notices, True),
                f"off {bad(notices, True)[:5]}")
    books.check("every Payment has exactly one receipt template message at WeChat", not bad(sends),
                f"{sum(sends.values())} receipt messages sent; off {bad(sends)[:5]}")
    books.check("every Payment delivered to the ERP exactly once (by Idempotency-Key)", not bad(at_erp),
                f"off {bad(at_erp)[:5]}")
    excess = [p.receipt_no for p in ours["payments"] if p.excess_fen]
    books.check("no overpayment (the driver never pays more than outstanding)", not excess, f"{excess[:5]}")


def _three_way(books: Books, ledger: list[dict[str, Any]], standin_refunds: list[dict[str, Any]],
               ours: dict[str, Any], received: list[dict[str, Any]]) -> None:
    paid = [(len(ledger), sum(r["amount"] for r in ledger)),
            (len(ours["payments"]), sum(p.amount_fen for p in ours["payments"])),
            _erp_sum(received, "payment.succeeded", "payment")]
    done = [r for r in standin_refunds if r.get("status") == "SUCCESS"]
    refunded = [(len(done), sum(int(r["amount"]["refund"]) for r in done)),
                (sum(r.status == "succeeded" for r in ours["refunds"]),
                 sum(r.amount_fen for r in ours["refunds"] if r.status == "succeeded")),
                _erp_sum(received, "refund.succeeded", "refund")]
    for label, triple in (("payments", paid), ("refunds", refunded)):
        books.table.append((label, *(f"{n} / ¥{fen / 100:,.2f}" for n, fen in triple)))
        books.check(f"{label}: WeChat Pay = RenoPay = ERP (count and sum)", len(set(triple)) == 1,
                    f"{triple}")
    ledger_refunded = sum(r["refunded"] for r in ledger)
    books.check("stand-in ledger's refunded total = its succeeded refunds", ledger_refunded == refunded[0][1],
                f"{ledger_refunded} vs {refunded[0][1]}")


def _erp_sum(received: list[dict[str, Any]], topic: str, key: str) -> tuple[int, int]:
    found = [e["data"][key]["amount_fen"] for e in received if e["type"] == topic]
    return len(found), sum(found)
