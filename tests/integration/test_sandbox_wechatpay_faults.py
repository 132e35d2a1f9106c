"""Stand-in notifications (issue 3, acceptance 2) and one test per fault-injection switch (acceptance 5)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
from wechatpayv3 import WeChatPayType

from sandbox.wechatpay import StandIn
from sandbox.wechatpay.crypto import SIGNTEST_PREFIX
from sandbox.wechatpay.notifier import RETRY_SCHEDULE
from tests.fixtures.wechatpay_standin import NotifyReceiver, wait_until
from tests.integration.test_sandbox_wechatpay import bootstrap_certificate


def open_order(make_wxpay, receiver: NotifyReceiver, out_trade_no: str, total: int = 3800000, **extra):
    wxpay = make_wxpay(notify_url=receiver.url)
    status, _ = wxpay.pay(
        description="装修首期款", out_trade_no=out_trade_no, amount={"total": total}, **extra
    )
    assert status == 200
    return wxpay


def test_payment_notification_verifies_with_sdk_callback(
    make_wxpay, notify_receiver, wechatpay_standin: StandIn
):
    open_order(
        make_wxpay,
        notify_receiver,
        "NOTE_0001",
        payer={"openid": "oPayer"},
        attach="bill:7",
        pay_type=WeChatPayType.JSAPI,
    )
    paid = wechatpay_standin.pay("NOTE_0001", payer_total=3700000, bank_type="CMB_DEBIT")
    [received] = notify_receiver.wait_for(1)
    assert received["error"] is None
    callback = received["callback"]
    assert callback["event_type"] == "TRANSACTION.SUCCESS" and callback["resource_type"] == "encrypt-resource"
    resource = callback["resource"]
    assert resource == paid
    assert resource["trade_state"] == "SUCCESS" and resource["trade_type"] == "JSAPI"
    assert resource["payer"] == {"openid": "oPayer"} and resource["attach"] == "bill:7"
    assert resource["amount"] == {
        "total": 3800000,
        "payer_total": 3700000,
        "currency": "CNY",
        "payer_currency": "CNY",
    }
    headers = received["headers"]
    assert headers["Wechatpay-Serial"] == wechatpay_standin.credentials.platform_public_key_id
    assert headers["Wechatpay-Signature-Type"] == "WECHATPAY2-SHA256-RSA2048"
    assert json.loads(received["body"])["resource"]["associated_data"] == "transaction"
    wait_until(lambda: wechatpay_standin.notifications()["notifications"][0]["state"] == "delivered")
    assert [(d["status"], d["attempt"]) for d in wechatpay_standin.deliveries()] == [(204, 1)]


def test_certificate_mode_notification_verifies(
    make_wxpay, notify_receiver, wechatpay_standin, tmp_path: Path
):
    open_order(make_wxpay, notify_receiver, "CERT_0001")
    wechatpay_standin.set_mode("certificate")
    bootstrap_certificate(tmp_path / "certs")
    cert_client = make_wxpay(certificate_dir=tmp_path / "certs")
    wechatpay_standin.pay("CERT_0001")
    [received] = notify_receiver.wait_for(1)
    assert received["headers"]["Wechatpay-Serial"] == wechatpay_standin.credentials.platform_cert_serial_no
    # Even the receiver's public-key client accepts it: on an unknown serial wechatpayv3 downloads
    # /v3/certificates (from the patched gateway) and finds the certificate there.
    assert received["callback"]["resource"]["out_trade_no"] == "CERT_0001"
    result = cert_client.callback(received["headers"], received["body"])
    assert result["resource"]["out_trade_no"] == "CERT_0001"
    assert "/v3/certificates" in {r["path"] for r in wechatpay_standin.received()}


def test_signtest_probe_fails_verification(
    notify_receiver: NotifyReceiver, wechatpay_standin: StandIn, make_wxpay
):
    open_order(make_wxpay, notify_receiver, "PROBE_0001")
    wechatpay_standin.signtest(out_trade_no="PROBE_0001")
    [received] = notify_receiver.wait_for(1)
    assert received["headers"]["Wechatpay-Signature"].startswith(SIGNTEST_PREFIX)
    assert received["callback"] is None
    assert (
        wait_until(lambda: wechatpay_standin.deliveries())[0]["status"] == 401
    )  # answered 4xx, never retried
    assert wechatpay_standin.order("PROBE_0001")["trade_state"] == "NOTPAY"


def test_signtest_switch_precedes_the_real_notification(make_wxpay, notify_receiver, wechatpay_standin):
    open_order(make_wxpay, notify_receiver, "PROBE_0002")
    wechatpay_standin.notifier.set_faults(signtest=True, count=1)
    wechatpay_standin.pay("PROBE_0002")
    probe, real = notify_receiver.wait_for(2)
    assert probe["callback"] is None and probe["headers"]["Wechatpay-Signature"].startswith(SIGNTEST_PREFIX)
    assert real["callback"]["resource"]["out_trade_no"] == "PROBE_0002"


def test_delayed(make_wxpay, notify_receiver, wechatpay_standin):
    open_order(make_wxpay, notify_receiver, "DELAY_0001")
    wechatpay_standin.notifier.set_faults(delay=0.3)
    started = time.monotonic()
    wechatpay_standin.pay("DELAY_0001")
    assert wechatpay_standin.order("DELAY_0001")["trade_state"] == "SUCCESS"
    notify_receiver.wait_for(1)
    assert time.monotonic() - started >= 0.3


def test_duplicated(make_wxpay, notify_receiver, wechatpay_standin):
    open_order(make_wxpay, notify_receiver, "DUP_0001")
    wechatpay_standin.notifier.set_faults(duplicate=3)
    wechatpay_standin.pay("DUP_0001")
    received = notify_receiver.wait_for(3)
    assert len({r["callback"]["id"] for r in received}) == 1  # the same notification three times
    assert [
        d["copy"]
        for d in wait_until(
            lambda: len(wechatpay_standin.deliveries()) == 3 and wechatpay_standin.deliveries()
        )
    ] == [0, 1, 2]


def test_concurrent(make_wxpay, notify_receiver, wechatpay_standin):
    open_order(make_wxpay, notify_receiver, "CONC_0001")
    notify_receiver.answer_delay = 0.2
    wechatpay_standin.notifier.set_faults(concurrent=4)
    wechatpay_standin.pay("CONC_0001")
    received = notify_receiver.wait_for(4)
    assert all(r["callback"]["resource"]["out_trade_no"] == "CONC_0001" for r in received)
    assert notify_receiver.max_in_flight == 4


def test_out_of_order(make_wxpay, notify_receiver, wechatpay_standin):
    for no in ("ORD_0001", "ORD_0002", "ORD_0003"):
        open_order(make_wxpay, notify_receiver, no)
    wechatpay_standin.notifier.set_faults(out_of_order=True, count=3)
    for no in ("ORD_0001", "ORD_0002", "ORD_0003"):
        wechatpay_standin.pay(no)
    snapshot = wechatpay_standin.notifications()
    assert snapshot["held"] == 3 and {n["state"] for n in snapshot["notifications"]} == {"held"}
    assert notify_receiver.received == []
    assert wechatpay_standin.notifier.release() == 3
    received = notify_receiver.wait_for(3)
    assert [r["callback"]["resource"]["out_trade_no"] for r in received] == [
        "ORD_0003",
        "ORD_0002",
        "ORD_0001",
    ]


def test_lost(make_wxpay, notify_receiver, wechatpay_standin):
    open_order(make_wxpay, notify_receiver, "LOST_0001")
    wechatpay_standin.notifier.set_faults(lost=True, count=1)
    wechatpay_standin.pay("LOST_0001")
    [record] = wechatpay_standin.notifications()["notifications"]
    assert record["state"] == "lost" and wechatpay_standin.deliveries() == []
    _, text = make_wxpay().query(out_trade_no="LOST_0001")  # the money is there: query finds it
    assert json.loads(text)["trade_state"] == "SUCCESS"
    assert notify_receiver.received == []


def test_retry_schedule_scaled(make_wxpay, notify_receiver, wechatpay_standin):
    open_order(make_wxpay, notify_receiver, "RETRY_0001")
    notify_receiver.answers = [500, 500]
    wechatpay_standin.pay("RETRY_0001")
    notify_receiver.wait_for(3)
    deliveries = wait_until(
        lambda: len(wechatpay_standin.deliveries()) == 3 and wechatpay_standin.deliveries()
    )
    assert [(d["attempt"], d["status"]) for d in deliveries] == [(1, 500), (2, 500), (3, 204)]
    assert json.loads(deliveries[0]["answer"])["code"] == "FAIL"
    assert wechatpay_standin.notifications()["notifications"][0]["state"] == "delivered"
    time.sleep(RETRY_SCHEDULE[2] * wechatpay_standin.notifier.retry_scale * 3)  # no fourth attempt comes
    assert len(wechatpay_standin.deliveries()) == 3


def test_retries_give_up_after_the_whole_schedule(make_wxpay, notify_receiver, wechatpay_standin):
    open_order(make_wxpay, notify_receiver, "GIVEUP_001")
    notify_receiver.answers = [503] * 100
    wechatpay_standin.notifier.retry_scale = 0.00001  # the 24 h schedule in under a second
    try:
        wechatpay_standin.pay("GIVEUP_001")
        wait_until(lambda: wechatpay_standin.notifications()["notifications"][0]["state"] == "gave_up")
    finally:
        wechatpay_standin.notifier.retry_scale = 0.001
    assert [d["attempt"] for d in wechatpay_standin.deliveries()] == list(range(1, len(RETRY_SCHEDULE) + 2))


def test_refund_notifications(make_wxpay, notify_receiver, wechatpay_standin):
    wxpay = open_order(make_wxpay, notify_receiver, "RFN_0001", total=1000)
    wechatpay_standin.pay("RFN_0001", notify=False)
    wechatpay_standin.set_refund_outcome("ABNORMAL", out_refund_no="RFN_R2")
    wechatpay_standin.set_refund_outcome("PROCESSING", out_refund_no="RFN_R3")  # held until resolved
    for no in ("RFN_R1", "RFN_R2", "RFN_R3"):
        status, _ = wxpay.refund(
            out_refund_no=no,
            amount={"refund": 100, "total": 1000, "currency": "CNY"},
            out_trade_no="RFN_0001",
            notify_url=notify_receiver.url + "?ignored=no",
        )
        assert status == 400  # a notify_url with a query string is refused
        status, _ = wxpay.refund(
            out_refund_no=no,
            amount={"refund": 100, "total": 1000, "currency": "CNY"},
            out_trade_no="RFN_0001",
            notify_url=notify_receiver.url,
        )
        assert status == 200
    notify_receiver.wait_for(2)
    wechatpay_standin.resolve_refund("RFN_R3", "CLOSED")
    received = notify_receiver.wait_for(3)
    outcomes = {
        r["callback"]["resource"]["out_refund_no"]: (
            r["callback"]["event_type"],
            r["callback"]["resource"]["refund_status"],
        )
        for r in received
    }
    assert outcomes == {
        "RFN_R1": ("REFUND.SUCCESS", "SUCCESS"),
        "RFN_R2": ("REFUND.ABNORMAL", "ABNORMAL"),
        "RFN_R3": ("REFUND.CLOSED", "CLOSED"),
    }
    assert all(json.loads(r["body"])["resource"]["associated_data"] == "refund" for r in received)
    query = json.loads(wxpay.query_refund(out_refund_no="RFN_R1")[1])
    assert query["status"] == "SUCCESS" and "success_time" in query
    assert wechatpay_standin.ledger()[0]["refunded"] == 100


def test_amount_mismatch_is_reported_as_paid(make_wxpay, notify_receiver, wechatpay_standin):
    open_order(make_wxpay, notify_receiver, "MISM_0001", total=5000)
    wechatpay_standin.pay("MISM_0001", amount=1)
    [received] = notify_receiver.wait_for(1)
    assert received["callback"]["resource"]["amount"]["total"] == 1


@pytest.mark.parametrize(
    ("kind", "status", "code"), [("error500", 500, "SYSTEM_ERROR"), ("error429", 429, "FREQUENCY_LIMITED")]
)
def test_api_errors_for_the_next_calls(make_wxpay, wechatpay_standin, kind, status, code):
    wxpay = make_wxpay()
    wxpay.pay(description="d", out_trade_no="FAULT_0001", amount={"total": 100})
    wechatpay_standin.api_faults.add(kind=kind, count=2, path_prefix="/v3/pay/transactions/out-trade-no")
    assert (
        wxpay.pay(description="d", out_trade_no="FAULT_0002", amount={"total": 100})[0] == 200
    )  # other path
    for _ in range(2):
        answer = wxpay.query(out_trade_no="FAULT_0001")
        assert answer[0] == status and json.loads(answer[1])["code"] == code
    assert wxpay.query(out_trade_no="FAULT_0001")[0] == 200


def test_api_error_after_processing_is_ambiguous(make_wxpay, wechatpay_standin):
    wxpay = make_wxpay()
    wechatpay_standin.api_faults.add(kind="error500", after=True)
    assert wxpay.pay(description="d", out_trade_no="AMBIG_0001", amount={"total": 100})[0] == 500
    assert wechatpay_standin.order("AMBIG_0001")["trade_state"] == "NOTPAY"  # created anyway
    retried = wxpay.pay(description="d", out_trade_no="AMBIG_0001", amount={"total": 100})
    assert retried[0] == 200 and "code_url" in json.loads(retried[1])


def test_slow_responses(make_wxpay, wechatpay_standin):
    wxpay = make_wxpay()
    wechatpay_standin.api_faults.add(kind="slow", seconds=0.4, count=2)
    wxpay._core._timeout = (5, 0.1)
    with pytest.raises(requests.exceptions.ReadTimeout):
        wxpay.pay(description="d", out_trade_no="SLOW_0001", amount={"total": 100})
    wxpay._core._timeout = (5, 10)
    started = time.monotonic()
    assert wxpay.pay(description="d", out_trade_no="SLOW_0001", amount={"total": 100})[0] == 200
    assert time.monotonic() - started >= 0.4
    wait_until(lambda: len(wechatpay_standin.received()) == 2)  # the timed-out call was still processed


def test_control_http_fault_switches(
    wechatpay_standin_server, wechatpay_standin, make_wxpay, notify_receiver
):
    base = wechatpay_standin_server.url + "/_control"
    open_order(make_wxpay, notify_receiver, "HTTP_0001")
    faults = requests.post(
        f"{base}/faults/notifications", json={"duplicate": 2, "count": 1}, timeout=5
    ).json()
    assert faults["duplicate"] == 2
    requests.post(f"{base}/orders/HTTP_0001/pay", json={"openid": "oHttp"}, timeout=5).raise_for_status()
    notify_receiver.wait_for(2)
    wait_until(lambda: len(requests.get(f"{base}/deliveries", timeout=5).json()) == 2)
    assert requests.post(f"{base}/faults/api", json={"kind": "error429", "count": 1}, timeout=5).ok
    assert make_wxpay().query(out_trade_no="HTTP_0001")[0] == 429
    probe = requests.post(
        f"{base}/notifications/signtest", json={"url": notify_receiver.url}, timeout=5
    ).json()
    assert probe["state"] == "probe"
    notify_receiver.wait_for(3)
    assert notify_receiver.received[2]["callback"] is None
