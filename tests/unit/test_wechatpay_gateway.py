"""The gateway without the network: error classification, bridge parameters, callback verification."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from payments.wechatpay import (
    CallbackRejected,
    GatewayConfig,
    OrderAlreadyPaid,
    OrderNotFound,
    PermanentError,
    RetryableError,
    WeChatPayGateway,
    classify,
    transaction_from,
)
from sandbox.keys import SandboxCredentials, generate
from tests.fixtures.payments import SignFn, make_signer


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> SandboxCredentials:
    return generate(tmp_path_factory.mktemp("unit-keys"))


@pytest.fixture(scope="module")
def gateway(creds: SandboxCredentials) -> WeChatPayGateway:
    return WeChatPayGateway(
        GatewayConfig(
            mchid=creds.mch_id,
            appid=creds.app_id,
            apiv3_key=creds.apiv3_key,
            private_key_pem=creds.merchant_private_key_file.read_text(),
            cert_serial_no=creds.merchant_cert_serial_no,
            api_base="http://127.0.0.1:9",
            notify_url="https://example.invalid/payments/wechatpay/notify",
            refund_notify_url="https://example.invalid/payments/wechatpay/refund-notify",
            public_key_pem=creds.platform_public_key_file.read_text(),
            public_key_id=creds.platform_public_key_id,
        )
    )


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (500, "SYSTEM_ERROR", RetryableError),
        (500, "SYSTEMERROR", RetryableError),
        (503, "BANKERROR", RetryableError),
        (429, "FREQUENCY_LIMITED", RetryableError),
        (403, "NOT_ENOUGH", RetryableError),
        (404, "RESOURCE_NOT_EXISTS", RetryableError),
        (502, "", RetryableError),
        (400, "PARAM_ERROR", PermanentError),
        (400, "INVALID_REQUEST", PermanentError),
        (401, "SIGN_ERROR", PermanentError),
        (403, "NO_AUTH", PermanentError),
        (403, "OUT_TRADE_NO_USED", PermanentError),
        (400, "ORDER_CLOSED", PermanentError),
        (404, "ORDER_NOT_EXIST", OrderNotFound),
        (404, "ORDERNOTEXIST", OrderNotFound),
        (400, "ORDERPAID", OrderAlreadyPaid),
    ],
)
def test_wechat_error_answers_become_retryable_or_permanent(status: int, code: str, kind: type) -> None:
    error = classify(status, json.dumps({"code": code, "message": "x"}))
    assert type(error) is kind and error.code == code and error.http_status == status


def test_the_gateway_is_never_left_without_a_timeout(gateway: WeChatPayGateway) -> None:
    assert gateway._wxpay._core._timeout == (5.0, 10.0)
    assert gateway._wxpay._core._gate_way == "http://127.0.0.1:9"


def test_a_network_failure_is_retryable(gateway: WeChatPayGateway) -> None:
    with pytest.raises(RetryableError) as caught:
        gateway.query_by_out_trade_no("B2611-0001-abcdef01")
    assert caught.value.code == "NETWORK"


def test_bridge_parameters_carry_a_pay_sign_that_verifies_with_the_merchant_key(
    gateway: WeChatPayGateway, creds: SandboxCredentials
) -> None:
    params = gateway.jsapi_pay_params("wx2611prepay")
    assert set(params) == {"appId", "timeStamp", "nonceStr", "package", "signType", "paySign"}
    assert params["package"] == "prepay_id=wx2611prepay" and params["signType"] == "RSA"
    assert abs(int(params["timeStamp"]) - time.time()) < 60
    message = (
        f"{params['appId']}\n{params['timeStamp']}\n{params['nonceStr']}\n{params['package']}\n".encode()
    )
    key = serialization.load_pem_public_key(creds.merchant_public_key_file.read_bytes())
    key.verify(base64.b64decode(params["paySign"]), message, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr, call-arg]


@pytest.fixture
def signer(creds: SandboxCredentials) -> SignFn:
    return make_signer(creds)


def test_a_genuine_notification_is_verified_and_decrypted(gateway: WeChatPayGateway, signer: SignFn) -> None:
    headers, body = signer({"out_trade_no": "B2611-0001-abcdef01"}, event_id="EV-1")
    callback = gateway.verify_and_decrypt(headers, body)
    assert (callback.event_id, callback.event_type) == ("EV-1", "TRANSACTION.SUCCESS")
    assert callback.resource["out_trade_no"] == "B2611-0001-abcdef01"


FORGERIES = {
    "signtest probe": {"signtest": True},
    "wrong key": {"wrong_key": True},
    "300 s old": {"age": 300},
    "300 s ahead": {"age": -300},
    "unknown public key id": {"serial": "PUB_KEY_ID_0123"},
    "certificate serial in public-key mode": {"serial": "5157F09EFDC096DE15EBE81A47057A72"},
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_forged_probing_or_stale_notifications_are_rejected(
    gateway: WeChatPayGateway, signer: SignFn, forgery: str
) -> None:
    args = dict(FORGERIES[forgery])
    now = int(time.time())  # one clock for signing and checking: a second that ticks between them
    if "age" in args:       # must not turn "300 s ahead" into 299
        args["timestamp"] = now - int(args.pop("age"))  # type: ignore[call-overload]
    headers, body = signer({"out_trade_no": "B2611-0001-abcdef01"}, **args)
    with pytest.raises(CallbackRejected):
        gateway.verify_and_decrypt(headers, body, now=now)


def test_a_body_changed_in_transit_is_rejected(gateway: WeChatPayGateway, signer: SignFn) -> None:
    headers, body = signer({"out_trade_no": "B2611-0001-abcdef01"})
    with pytest.raises(CallbackRejected):
        gateway.verify_and_decrypt(headers, body.replace(b"TRANSACTION", b"TRANSACTIOM"))


def test_missing_headers_are_rejected_not_raised(gateway: WeChatPayGateway) -> None:
    with pytest.raises(CallbackRejected):
        gateway.verify_and_decrypt({}, b"{}")


def test_a_transaction_answer_becomes_a_typed_result() -> None:
    tx = transaction_from(
        {
            "appid": "wx1",
            "mchid": "19",
            "out_trade_no": "B2611-0001-abcdef01",
            "transaction_id": "4200",
            "trade_state": "SUCCESS",
            "trade_type": "NATIVE",
            "success_time": "2026-11-26T10:00:00+08:00",
            "amount": {"total": 100, "payer_total": 90},
            "payer": {"openid": "o1"},
        }
    )
    assert tx.paid and (tx.amount_fen, tx.payer_total_fen, tx.payer_openid) == (100, 90, "o1")
    assert tx.success_time == dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)
    assert not transaction_from({"out_trade_no": "x", "trade_state": "NOTPAY"}).paid
