"""The inbound ERP API /api/v1: bearer key, strict validation, idempotency, and the contract's bill."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import create_app
from tests.fixtures.erp import auth, erp_settings

BILL = {
    "erp_ref": "AR-2026-0042", "amount_fen": 3_800_000, "title": "水电改造 首期款",
    "customer": {"name": "张三", "phone": "13800138000", "erp_ref": "C-001"},
    "contract_no": "HT-2026-118", "stage": "首期款", "due_date": "2026-12-10",
}
BILL_KEYS = {"number", "erp_ref", "status", "amount_fen", "paid_fen", "refunded_fen", "outstanding_fen",
             "seq", "pay_url", "payments", "refunds"}


@pytest.fixture
def client(erp_app):
    return erp_app.test_client()


def test_creating_a_bill_answers_201_with_the_contract_bill_and_an_absolute_pay_url(client, erp_app):
    response = client.post("/api/v1/bills", json=BILL, headers=auth())

    assert response.status_code == 201
    bill = response.get_json()
    assert set(bill) == BILL_KEYS
    assert bill["status"] == "open" and bill["seq"] == 1 and bill["outstanding_fen"] == 3_800_000
    assert bill["payments"] == [] and bill["refunds"] == []
    assert bill["pay_url"] == erp_app.extensions["renopay.links"].pay_url(bill["number"])
    assert bill["pay_url"].startswith("http://127.0.0.1:5000/pay/")


def test_the_same_request_repeated_answers_200_with_the_same_bill(client):
    first = client.post("/api/v1/bills", json=BILL, headers=auth()).get_json()
    again = client.post("/api/v1/bills", json=BILL, headers=auth())

    assert again.status_code == 200 and again.get_json() == first


def test_the_same_erp_ref_with_other_content_is_a_409_conflict(client):
    client.post("/api/v1/bills", json=BILL, headers=auth())
    response = client.post("/api/v1/bills", json={**BILL, "amount_fen": 1}, headers=auth())

    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "idempotency_conflict"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key-0123456789"},
                                     {"Authorization": "Basic ZXJwOmtleQ=="}])
def test_missing_or_wrong_key_is_401(client, headers):
    response = client.post("/api/v1/bills", json=BILL, headers=headers)

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_without_a_configured_key_every_call_is_401_with_a_message(db, database_url, sandbox_credentials):
    instance = Path(sandbox_credentials.directory).parent
    app = create_app(erp_settings(database_url, instance, erp_api_key=""))
    response = app.test_client().get("/api/v1/bills/B2611-0001", headers=auth())

    assert response.status_code == 401
    assert "ERP_API_KEY" in response.get_json()["error"]["message"]


def test_invalid_fields_are_422_with_a_message_per_field(client):
    body = {**BILL, "amount_fen": "38000", "stage": "随便", "due_date": "2026-02-30", "extra": 1,
            "customer": {"phone": "x"}}
    response = client.post("/api/v1/bills", json=body, headers=auth())

    assert response.status_code == 422
    fields = response.get_json()["error"]["fields"]
    assert set(fields) == {"amount_fen", "stage", "due_date", "extra", "customer.name", "customer.phone"}


@pytest.mark.parametrize("body", [b"{", b"NaN", b"\xff\xfe", b""])
def test_malformed_json_is_400(client, body):
    response = client.post("/api/v1/bills", data=body, headers={**auth(), "Content-Type": "application/json"})

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "malformed_json"


def test_json_that_is_not_an_object_is_422(client):
    response = client.post("/api/v1/bills", json=[1, 2], headers=auth())
    assert response.status_code == 422 and "body" in response.get_json()["error"]["fields"]


def test_unknown_bill_is_404_and_a_bill_is_readable_by_number(client):
    assert client.get("/api/v1/bills/B2611-9999", headers=auth()).status_code == 404
    assert client.get("/api/v1/bills/%00", headers=auth()).status_code == 404
    for path in ("/api/v1/bills/%2F0", "/api/v1/bills//0", "/api/v1/bills//0/void"):  # never a redirect
        method = client.post if path.endswith("void") else client.get
        response = method(path, headers=auth())
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found", path
    number = client.post("/api/v1/bills", json=BILL, headers=auth()).get_json()["number"]

    response = client.get(f"/api/v1/bills/{number.lower()}", headers=auth())
    assert response.status_code == 200 and response.get_json()["number"] == number


def test_unknown_routes_and_methods_under_api_v1_answer_json(client):
    assert client.get("/api/v1/nothing", headers=auth()).get_json()["error"]["code"] == "not_found"
    response = client.delete("/api/v1/bills", headers=auth())
    assert response.status_code == 405 and response.get_json()["error"]["code"] == "method_not_allowed"


def test_voiding_an_open_bill_twice_answers_the_void_bill_both_times(client):
    number = client.post("/api/v1/bills", json=BILL, headers=auth()).get_json()["number"]

    first = client.post(f"/api/v1/bills/{number}/void", json={"reason": "合同取消"}, headers=auth())
    again = client.post(f"/api/v1/bills/{number}/void", headers=auth())

    assert first.status_code == again.status_code == 200
    assert first.get_json()["status"] == "void" and first.get_json()["seq"] == 2
    assert again.get_json() == first.get_json()


def test_a_paid_bill_cannot_be_voided(client, build, erp_app):
    number = client.post("/api/v1/bills", json=BILL, headers=auth()).get_json()["number"]
    with erp_app.app_context():
        bill_id = _bill_id(erp_app, number)
    build.pay(build.attempt(bill_id, 100_000), 100_000)

    response = client.post(f"/api/v1/bills/{number}/void", headers=auth())
    assert response.status_code == 409


def _bill_id(app, number):
    from payments import services

    with app.extensions["renopay.db"].transaction() as s:
        return services.get_bill_by_number(s, number).id


def test_refund_requests_are_stored_and_idempotent_on_out_refund_no(client, build, erp_app):
    number = client.post("/api/v1/bills", json=BILL, headers=auth()).get_json()["number"]
    build.pay(build.attempt(_bill_id(erp_app, number), 1_000_000), 1_000_000)
    refund = {"out_refund_no": "RF-2026-0001", "amount_fen": 200_000, "reason": "少做一面墙"}

    first = client.post(f"/api/v1/bills/{number}/refunds", json=refund, headers=auth())
    again = client.post(f"/api/v1/bills/{number}/refunds", json=refund, headers=auth())
    other = client.post(f"/api/v1/bills/{number}/refunds", json={**refund, "amount_fen": 1}, headers=auth())

    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)
    [stored] = first.get_json()["refunds"]
    assert stored["out_refund_no"] == "RF-2026-0001" and stored["status"] == "pending"
    assert again.get_json()["refunds"] == [stored]
    assert len(first.get_json()["payments"]) == 1


def test_refunding_more_than_was_paid_is_422(client, build, erp_app):
    number = client.post("/api/v1/bills", json=BILL, headers=auth()).get_json()["number"]
    build.pay(build.attempt(_bill_id(erp_app, number), 1_000), 1_000)
    refund = {"out_refund_no": "RF-2", "amount_fen": 5_000, "reason": "退款"}

    response = client.post(f"/api/v1/bills/{number}/refunds", json=refund, headers=auth())
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "refund_not_allowed"


def test_openapi_document_is_3_1_and_public(client):
    response = client.get("/api/v1/openapi.json")
    doc = response.get_json()
    assert response.status_code == 200 and doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {"/bills", "/bills/{number}", "/bills/{number}/void",
                                 "/bills/{number}/refunds", "/openapi.json"}
    assert set(doc["components"]["schemas"]["Bill"]["required"]) == BILL_KEYS
