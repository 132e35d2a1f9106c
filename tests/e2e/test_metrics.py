"""/metrics counts requests by route and status and reports the outbox depth from the database."""

from __future__ import annotations

import re

from payments import services
from payments.models import BillSource


def _value(text: str, pattern: str) -> float:
    match = re.search(pattern + r" ([0-9.]+)$", text, re.M)
    assert match, f"{pattern} not in metrics:\n{text}"
    return float(match.group(1))


def test_metrics_show_requests_and_outbox_depth(live):
    assert live.get("/healthz").status_code == 200
    assert (
        live.get("/healthz", headers={"X-Request-ID": "abcdef123456"}).headers["X-Request-ID"]
        == "abcdef123456"
    )
    with live.db.transaction() as s:
        customer = services.find_or_create_customer(s, name="张三", phone="13800138000")
        services.issue_bill(
            s,
            customer=customer,
            amount_fen=100,
            title="定金",
            stage="定金",
            source=BillSource.erp,
            max_fen=10**8,
            open_now=True,
        )
    text = live.get("/metrics").text
    assert _value(text, r'renopay_http_requests_total\{method="GET",route="/healthz",status="200"\}') >= 2
    assert _value(text, r'renopay_outbox_depth\{subscriber="erp",status="pending"\}') >= 1
    assert _value(text, r'renopay_outbox_oldest_pending_seconds\{subscriber="erp"\}') >= 0
    assert "renopay_database_up 1" in text
