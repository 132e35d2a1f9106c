"""``POST /payments/wechatpay/refund-notify`` at the edges, over HTTP: 401 for anything unverifiable,
200 for a verified notification we cannot apply (recorded), 204 when applied or already applied."""

from __future__ import annotations

import time
from typing import Any

import requests
from sqlalchemy import select

from payments.models import RefundStatus
from payments.notifications import PaymentNotification
from tests.fixtures.payments import PayBench, SignFn
from tests.fixtures.wechatpay_standin import wait_until
from tests.integration.test_notify import open_native
from tests.integration.test_refunds import ask_refund, bill_of, refund_of


def refund_resource(bench: PayBench, out_refund_no: str, status: str = "SUCCESS") -> dict[str, Any]:
    return {
        "mchid": bench.credentials.mch_id,
        "out_trade_no": "B2611-0001-X",
        "transaction_id": "4200000000000000000000000001",
        "out_refund_no": out_refund_no,
        "refund_id": "50000000000000000000000000001",
        "refund_status": status,
        "amount": {"total": 100, "refund": 100, "payer_total": 100, "payer_refund": 100},
    }


def post(bench: PayBench, headers: dict[str, str], body: bytes) -> requests.Response:
    return requests.post(
        bench.url + "/payments/wechatpay/refund-notify", data=body, headers=headers, timeout=10
    )


def signed(
    sign: SignFn, resource: dict[str, Any], status: str = "SUCCESS", **knobs: Any
) -> tuple[dict[str, str], bytes]:
    return sign(resource, event_type=f"REFUND.{status}", associated_data="refund", **knobs)


def test_unverifiable_refund_notifications_are_answered_401(
    paybench: PayBench, sign_notification: SignFn
) -> None:
    resource = refund_resource(paybench, "NOPE-1")
    for knobs in ({"wrong_key": True}, {"signtest": True}, {"timestamp": int(time.time()) - 300}):
        answer = post(paybench, *signed(sign_notification, resource, **knobs))
        assert (answer.status_code, answer.json()["code"]) == (401, "FAIL"), knobs


def test_a_verified_notification_of_an_unknown_refund_is_recorded_and_answered_200(
    paybench: PayBench, sign_notification: SignFn
) -> None:
    answer = post(paybench, *signed(sign_notification, refund_resource(paybench, "NOPE-2")))
    assert answer.status_code == 200
    with paybench.db.transaction() as s:
        stored = s.execute(select(PaymentNotification)).scalar_one()
    assert (stored.reference, stored.outcome) == ("NOPE-2", "anomaly")


def test_an_applied_refund_notification_and_its_redelivery_are_answered_204(
    paybench: PayBench, sign_notification: SignFn
) -> None:
    number = paybench.issue_bill(100_000)
    paybench.pay.pay(open_native(paybench, number))
    wait_until(lambda: bill_of(paybench, number).paid_fen == 100_000)
    ask_refund(paybench, number, 100, "ERP-N-1")
    headers, body = signed(sign_notification, refund_resource(paybench, "ERP-N-1"), event_id="evt-refund-1")

    assert post(paybench, headers, body).status_code == 204
    assert post(paybench, headers, body).status_code == 204

    assert refund_of(paybench, "ERP-N-1").status is RefundStatus.succeeded
    assert bill_of(paybench, number).refunded_fen == 100
    with paybench.db.transaction() as s:  # the redelivery was answered from the stored row, and counted
        stored = s.execute(
            select(PaymentNotification).where(PaymentNotification.event_id == "evt-refund-1")
        ).scalar_one()
    assert (stored.outcome, stored.deliveries) == ("applied", 2)
