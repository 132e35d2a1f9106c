"""End to end over HTTP: the ERP creates and voids bills through /api/v1 of a served RenoPay whose
in-process scheduler pushes the signed events back to the ERP's webhook receiver."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from erp_sync import scheduler, start_in_process
from tests.fixtures.database import truncate_all
from tests.fixtures.domain import Builder
from tests.fixtures.erp import ERP_SECRET, auth
from tests.fixtures.live import build_live
from tests.support.erp_receiver import wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def erp_live(database_url, sandbox_credentials, erp_receiver, db):
    truncate_all(db)
    running = build_live(database_url, sandbox_credentials, erp_webhook_url=erp_receiver.url,
                         erp_webhook_secrets=(ERP_SECRET,))
    start_in_process(running.app)
    try:
        yield running
    finally:
        scheduler.stop(running.app)
        for server in running.servers:
            server.stop()
        running.db.dispose()


def _create(live, erp_ref: str) -> dict:
    body = {"erp_ref": erp_ref, "amount_fen": 500_000, "title": "木作 中期款", "stage": "中期款",
            "customer": {"name": "王五", "phone": "13700001111"}}
    response = live.post("/api/v1/bills", json=body, headers=auth())
    assert response.status_code == 201, response.text
    return response.json()


def test_erp_bills_round_trip_as_signed_ordered_webhooks(erp_live, erp_receiver):
    got = erp_receiver.receiver
    paid = _create(erp_live, "AR-E2E-1")
    voided = _create(erp_live, "AR-E2E-2")
    assert erp_live.post(f"/api/v1/bills/{voided['number']}/void", headers=auth()).status_code == 200
    build = Builder(erp_live.db)
    with erp_live.db.transaction() as s:
        from payments import services

        bill_id = services.get_bill_by_number(s, paid["number"]).id
    build.pay(build.attempt(bill_id, 200_000), 200_000)

    assert wait_until(lambda: len(got.processed) == 4, timeout=30)
    types = {(p["bill"]["number"], p["bill"]["seq"]): p["type"] for p in got.processed}
    assert types == {
        (paid["number"], 1): "bill.opened", (paid["number"], 2): "payment.succeeded",
        (voided["number"], 1): "bill.opened", (voided["number"], 2): "bill.voided",
    }
    assert got.bad_signatures == 0
    contract = json.loads((ROOT / "docs" / "erp-webhook.schema.json").read_text())
    for payload in got.processed:
        jsonschema.validate(payload, contract, cls=jsonschema.Draft202012Validator)
    bill = erp_live.get(f"/api/v1/bills/{paid['number']}", headers=auth()).json()
    assert bill["status"] == "partially_paid" and bill["paid_fen"] == 200_000 and len(bill["payments"]) == 1
    assert wait_until(lambda: scheduler.job_stats(erp_live.app).snapshot()["relay"].runs > 0, timeout=30)
