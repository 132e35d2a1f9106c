"""The WeChat Pay stand-in, driven by unmodified wechatpayv3 over real HTTP (issue 3, acceptance 1)."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import json
from pathlib import Path

import flask
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from wechatpayv3 import WeChatPay, WeChatPayType
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from sandbox.keys import SandboxCredentials
from sandbox.wechatpay import StandIn, create_app
from tests.fixtures.wechatpay_standin import wait_until
from tests.support.servers import RunningServer, serving

CST = dt.timezone(dt.timedelta(hours=8))


def today() -> str:
    return dt.datetime.now(CST).date().isoformat()


def bootstrap_certificate(directory: Path) -> None:
    """A throw-away, currently valid certificate, so wechatpayv3's constructor starts without the network.

    In certificate mode the SDK's constructor fetches /v3/certificates from its hard-coded production host
    unless cert_dir already holds a valid certificate; the gateway can only be patched after construction.
    With this placeholder in cert_dir, the first response (signed under the stand-in's real platform serial)
    carries an unknown serial, so the SDK itself downloads and decrypts /v3/certificates from the patched
    gateway and caches the real certificate in cert_dir as ``<serial>.pem``.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bootstrap placeholder")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bootstrap.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(params=["public_key", "certificate"])
def wxpay(request, wechatpay_standin: StandIn, make_wxpay, tmp_path: Path) -> WeChatPay:
    if request.param == "public_key":
        return make_wxpay()
    wechatpay_standin.set_mode("certificate")
    bootstrap_certificate(tmp_path / "certs")
    return make_wxpay(certificate_dir=tmp_path / "certs")


def body(answer: tuple[int, str | bytes]) -> dict:
    status, text = answer
    assert 200 <= status < 300, text
    return json.loads(text)


def test_sdk_does_every_call(wxpay: WeChatPay, wechatpay_standin: StandIn, wechatpay_credentials, tmp_path):
    jsapi = wxpay.pay(
        description="装修首期款",
        out_trade_no="B1001_a1",
        amount={"total": 3800000, "currency": "CNY"},
        payer={"openid": "oUser0000000000000000000001"},
        attach="bill:1001",
        pay_type=WeChatPayType.JSAPI,
    )
    assert jsapi[0] == 200 and body(jsapi)["prepay_id"].startswith("wx")
    native = wxpay.pay(description="二期款", out_trade_no="B1002_a1", amount={"total": 120000})
    assert native[0] == 200 and body(native)["code_url"].startswith("weixin://wxpay/bizpayurl?pr=")

    status, text = wxpay.query(out_trade_no="B1001_a1")
    assert status == 200 and json.loads(text)["trade_state"] == "NOTPAY"

    paid = wechatpay_standin.pay("B1001_a1", notify=False)
    assert len(paid["transaction_id"]) == 28 and paid["transaction_id"].startswith("4200")
    by_id = body(wxpay.query(transaction_id=paid["transaction_id"]))
    assert by_id["trade_state"] == "SUCCESS" and by_id["out_trade_no"] == "B1001_a1"
    assert by_id["amount"] == {
        "total": 3800000,
        "payer_total": 3800000,
        "currency": "CNY",
        "payer_currency": "CNY",
    }
    assert by_id["payer"] == {"openid": "oUser0000000000000000000001"} and by_id["attach"] == "bill:1001"
    assert dt.datetime.fromisoformat(by_id["success_time"]).utcoffset() == dt.timedelta(hours=8)

    assert wxpay.close(out_trade_no="B1002_a1") == (204, b"")
    assert body(wxpay.query(out_trade_no="B1002_a1"))["trade_state"] == "CLOSED"

    refund = body(
        wxpay.refund(
            out_refund_no="R1001_1",
            amount={"refund": 800000, "total": 3800000, "currency": "CNY"},
            out_trade_no="B1001_a1",
            notify_url="http://127.0.0.1:9/refund",
        )
    )
    assert refund["status"] == "PROCESSING" and refund["amount"]["refund"] == 800000
    wait_until(lambda: body(wxpay.query_refund(out_refund_no="R1001_1"))["status"] == "SUCCESS")
    assert body(wxpay.query(out_trade_no="B1001_a1"))["trade_state"] == "REFUND"

    bill = body(wxpay.trade_bill(bill_date=today()))
    assert bill["hash_type"] == "SHA1"
    status, payload = wxpay.download_bill(bill["download_url"])
    assert status == 200 and isinstance(payload, bytes)
    text = gzip.decompress(payload)
    assert hashlib.sha1(text).hexdigest() == bill["hash_value"]
    rows = list(csv.reader(io.StringIO(text.decode())))
    assert rows[0][0] == "交易时间" and len(rows[0]) == 27
    details = [r for r in rows[1:-2]]
    assert {(r[6], r[9], r[12], r[16]) for r in details} == {
        ("`B1001_a1", "`SUCCESS", "`38000.00", "`0.00"),
        ("`B1001_a1", "`REFUND", "`0.00", "`8000.00"),
    }
    assert rows[-2][0] == "总交易单数" and rows[-1][:3] == ["`2", "`38000.00", "`8000.00"]

    if wechatpay_standin.mode == "certificate":
        cached = tmp_path / "certs" / f"{wechatpay_credentials.platform_cert_serial_no}.pem"
        assert cached.read_text() == wechatpay_credentials.platform_cert_file.read_text()


def test_altered_response_is_rejected_by_sdk(wxpay: WeChatPay, wechatpay_standin: StandIn):
    wxpay.pay(description="d", out_trade_no="ALTER_1", amount={"total": 100})
    wechatpay_standin.api_faults.add(kind="altered", count=2)
    with pytest.raises(Exception, match="failed to verify the signature"):
        wxpay.query(out_trade_no="ALTER_1")
    with pytest.raises(Exception, match="failed to verify the signature"):
        wxpay.close(out_trade_no="ALTER_1")  # a 204: its signed timestamp is altered
    assert body(wxpay.query(out_trade_no="ALTER_1"))["trade_state"] == "CLOSED"


def test_bad_merchant_signature_is_401(
    make_wxpay, wechatpay_standin, wechatpay_credentials: SandboxCredentials
):
    wxpay = make_wxpay()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    wxpay._core._private_key = other  # signs with a key WeChat does not know
    status, text = wxpay.query(out_trade_no="WHATEVER_1")
    assert status == 401 and json.loads(text)["code"] == "SIGN_ERROR"
    unsigned = requests.get(
        f"{wxpay._core._gate_way}/v3/pay/transactions/out-trade-no/X123456?mchid=1", timeout=5
    )
    assert unsigned.status_code == 401 and unsigned.json()["code"] == "SIGN_ERROR"
    assert [r["status"] for r in wechatpay_standin.received()] == [401, 401]


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"description": "长" * 128}, 400, "PARAM_ERROR"),
        ({"out_trade_no": "abc"}, 400, "PARAM_ERROR"),
        ({"out_trade_no": "has space 123"}, 400, "PARAM_ERROR"),
        ({"amount": {"total": 0}}, 400, "PARAM_ERROR"),
        ({"amount": {"total": 100, "currency": "USD"}}, 400, "PARAM_ERROR"),
        ({"notify_url": "ftp://example.com/x"}, 400, "PARAM_ERROR"),
        ({"notify_url": "https://example.com/x?a=1"}, 400, "PARAM_ERROR"),
        ({"appid": "wx0000000000000000"}, 400, "APPID_MCHID_NOT_MATCH"),
        ({"mchid": "1900000000"}, 400, "MCH_NOT_EXISTS"),
        ({"attach": "x" * 129}, 400, "PARAM_ERROR"),
        ({"time_expire": "2001-01-01T00:00:00+08:00"}, 400, "INVALID_REQUEST"),
    ],
)
def test_order_validation(make_wxpay, wechatpay_standin, change: dict, status: int, code: str):
    wxpay = make_wxpay()
    params = {"description": "d", "out_trade_no": "VALID_0001", "amount": {"total": 100}, **change}
    answer = wxpay.pay(**params)
    assert answer[0] == status and json.loads(answer[1])["code"] == code
    assert wechatpay_standin.orders() == []


def test_jsapi_requires_payer_openid(make_wxpay, wechatpay_standin):
    answer = make_wxpay().pay(
        description="d",
        out_trade_no="JSAPI_0001",
        amount={"total": 1},
        payer={"openid": ""},
        pay_type=WeChatPayType.JSAPI,
    )
    assert answer[0] == 400 and json.loads(answer[1])["code"] == "PARAM_ERROR"


def test_idempotency_and_state_machine(make_wxpay, wechatpay_standin: StandIn):
    wxpay = make_wxpay()
    first = wxpay.pay(description="d", out_trade_no="IDEM_0001", amount={"total": 500})
    assert wxpay.pay(description="d", out_trade_no="IDEM_0001", amount={"total": 500}) == first
    other = wxpay.pay(description="d", out_trade_no="IDEM_0001", amount={"total": 501})
    assert other[0] == 403 and json.loads(other[1])["code"] == "OUT_TRADE_NO_USED"
    missing = wxpay.query(out_trade_no="NOPE_00001")
    assert missing[0] == 404 and json.loads(missing[1])["code"] == "ORDER_NOT_EXIST"

    wechatpay_standin.pay("IDEM_0001", notify=False)
    again = wxpay.pay(description="d", out_trade_no="IDEM_0001", amount={"total": 500})
    assert again[0] == 403 and json.loads(again[1])["code"] == "ORDERPAID"
    close = wxpay.close(out_trade_no="IDEM_0001")
    assert close[0] == 400 and json.loads(close[1])["code"] == "ORDERPAID"

    wxpay.pay(description="d", out_trade_no="IDEM_0002", amount={"total": 500})
    assert wxpay.close(out_trade_no="IDEM_0002")[0] == 204
    assert wxpay.close(out_trade_no="IDEM_0002")[0] == 204  # closing twice is harmless
    closed = wxpay.pay(description="d", out_trade_no="IDEM_0002", amount={"total": 500})
    assert closed[0] == 400 and json.loads(closed[1])["code"] == "ORDER_CLOSED"
    ledger = wechatpay_standin.ledger()
    assert [(r["out_trade_no"], r["amount"], r["refunded"]) for r in ledger] == [("IDEM_0001", 500, 0)]


def test_refund_rules(make_wxpay, wechatpay_standin: StandIn):
    wxpay = make_wxpay()
    wxpay.pay(description="d", out_trade_no="REF_00001", amount={"total": 100})
    early = wxpay.refund(
        out_refund_no="RF_0", amount={"refund": 1, "total": 100, "currency": "CNY"}, out_trade_no="REF_00001"
    )
    assert early[0] == 400 and json.loads(early[1])["code"] == "INVALID_REQUEST"  # not paid yet
    wechatpay_standin.pay("REF_00001", notify=False)
    wrong_total = wxpay.refund(
        out_refund_no="RF_1", amount={"refund": 1, "total": 99, "currency": "CNY"}, out_trade_no="REF_00001"
    )
    assert wrong_total[0] == 400 and json.loads(wrong_total[1])["code"] == "INVALID_REQUEST"
    first = body(
        wxpay.refund(
            out_refund_no="RF_1",
            amount={"refund": 50, "total": 100, "currency": "CNY"},
            out_trade_no="REF_00001",
        )
    )
    retry = body(
        wxpay.refund(
            out_refund_no="RF_1",
            amount={"refund": 50, "total": 100, "currency": "CNY"},
            out_trade_no="REF_00001",
        )
    )
    assert retry["refund_id"] == first["refund_id"]
    too_much = wxpay.refund(
        out_refund_no="RF_2", amount={"refund": 51, "total": 100, "currency": "CNY"}, out_trade_no="REF_00001"
    )
    assert too_much[0] == 400 and "超过" in json.loads(too_much[1])["message"]
    for i in range(2, 51):  # 49 more one-fen refunds: 50 in all
        assert (
            wxpay.refund(
                out_refund_no=f"RF_{i}",
                amount={"refund": 1, "total": 100, "currency": "CNY"},
                out_trade_no="REF_00001",
            )[0]
            == 200
        )
    limit = wxpay.refund(
        out_refund_no="RF_51", amount={"refund": 1, "total": 100, "currency": "CNY"}, out_trade_no="REF_00001"
    )
    assert limit[0] == 400 and "50" in json.loads(limit[1])["message"]
    missing = wxpay.query_refund(out_refund_no="RF_NONE")
    assert missing[0] == 404 and json.loads(missing[1])["code"] == "RESOURCE_NOT_EXISTS"
    wait_until(lambda: wechatpay_standin.ledger()[0]["refunded"] == 50 + 49)


def test_trade_bill_injections_and_absence(make_wxpay, wechatpay_standin: StandIn):
    wxpay = make_wxpay()
    for no, total in (("BILL_0001", 1000), ("BILL_0002", 2000)):
        wxpay.pay(description="d", out_trade_no=no, amount={"total": total})
        wechatpay_standin.pay(no, notify=False)
    body(
        wxpay.refund(
            out_refund_no="BILL_R1",
            amount={"refund": 300, "total": 1000, "currency": "CNY"},
            out_trade_no="BILL_0001",
        )
    )
    wait_until(lambda: wechatpay_standin.ledger()[0]["refunded"] == 300)
    injections = wechatpay_standin.bill_injections
    injections.add(today(), "extra_paid", total=777, out_trade_no="GHOST_0001")
    injections.add(today(), "amount_changed", out_trade_no="BILL_0002", total=1999)
    injections.add(today(), "refund_removed", out_refund_no="BILL_R1")
    injections.add(today(), "refund_added", out_trade_no="BILL_0002", refund=50, out_refund_no="PHANTOM_R")
    bill = body(wxpay.trade_bill(bill_date=today()))
    status, payload = wxpay.download_bill(bill["download_url"])
    assert status == 200
    payload = gzip.decompress(payload)
    assert hashlib.sha1(payload).hexdigest() == bill["hash_value"]
    rows = list(csv.reader(io.StringIO(payload.decode())))
    details = {(r[6][1:], r[9][1:], r[15][1:]): (r[12][1:], r[16][1:]) for r in rows[1:-2]}
    assert details == {
        ("BILL_0001", "SUCCESS", "0"): ("10.00", "0.00"),
        ("BILL_0002", "SUCCESS", "0"): ("19.99", "0.00"),
        ("GHOST_0001", "SUCCESS", "0"): ("7.77", "0.00"),
        ("BILL_0002", "REFUND", "PHANTOM_R"): ("0.00", "0.50"),
    }
    nothing = wxpay.trade_bill(bill_date="2001-01-01")
    assert nothing[0] == 400 and json.loads(nothing[1])["code"] == "NO_STATEMENT_EXIST"


def test_mounted_under_a_prefix(wechatpay_credentials: SandboxCredentials, make_wxpay):
    standin_app = create_app(wechatpay_credentials)
    host = DispatcherMiddleware(flask.Flask("host"), {"/sandbox/wechatpay": standin_app})
    with serving(host) as server:
        wxpay = make_wxpay()
        wxpay._core._gate_way = server.url + "/sandbox/wechatpay"
        assert wxpay.pay(description="d", out_trade_no="MOUNT_0001", amount={"total": 100})[0] == 200
        paid = requests.post(
            f"{wxpay._core._gate_way}/_control/orders/MOUNT_0001/pay", json={"notify": False}, timeout=5
        )
        assert paid.status_code == 200 and paid.json()["trade_state"] == "SUCCESS"
        bill = body(wxpay.trade_bill(bill_date=today()))
        assert bill["download_url"].startswith(server.url + "/sandbox/wechatpay/v3/billdownload/file?token=")
        status, payload = wxpay.download_bill(bill["download_url"])
        assert status == 200 and hashlib.sha1(gzip.decompress(payload)).hexdigest() == bill["hash_value"]


def test_control_api_over_http(
    wechatpay_standin_server: RunningServer, wechatpay_standin: StandIn, make_wxpay
):
    base = wechatpay_standin_server.url + "/_control"
    wxpay = make_wxpay()
    wxpay.pay(description="d", out_trade_no="CTRL_0001", amount={"total": 900})
    wxpay.pay(description="d", out_trade_no="CTRL_0002", amount={"total": 900})
    paid = requests.post(
        f"{base}/orders/CTRL_0001/pay", json={"amount": 899, "openid": "oX", "notify": False}, timeout=5
    ).json()
    assert paid["amount"]["total"] == 899 and paid["payer"] == {"openid": "oX"}
    assert requests.post(f"{base}/orders/CTRL_0002/expire", timeout=5).json()["trade_state"] == "CLOSED"
    again = requests.post(f"{base}/orders/CTRL_0002/pay", json={}, timeout=5)
    assert again.status_code == 409
    late = requests.post(f"{base}/orders/CTRL_0002/pay", json={"force": True, "notify": False}, timeout=5)
    assert late.json()["trade_state"] == "SUCCESS"  # a payment racing the close
    assert {r["out_trade_no"] for r in requests.get(f"{base}/ledger", timeout=5).json()} == {
        "CTRL_0001",
        "CTRL_0002",
    }
    assert requests.post(f"{base}/mode", json={"mode": "certificate"}, timeout=5).json()["serial"] == (
        wechatpay_standin.credentials.platform_cert_serial_no
    )
    assert requests.post(f"{base}/faults/api", json={"kind": "bogus"}, timeout=5).status_code == 400
    assert [r["path"].split("?")[0] for r in requests.get(f"{base}/requests", timeout=5).json()] == [
        "/v3/pay/transactions/native",
        "/v3/pay/transactions/native",
    ]
    requests.post(f"{base}/reset", timeout=5)
    assert requests.get(f"{base}/orders", timeout=5).json() == []
