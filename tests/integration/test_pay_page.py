"""The pay page over HTTP: the bill in Chinese, bad links, OAuth inside WeChat, the JSAPI parameters,
the Native QR and the status JSON."""

from __future__ import annotations

import base64
import io
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import zxingcpp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from PIL import Image
from sqlalchemy import func, select

from payments.links import Links
from payments.models import Bill, Customer, PaymentAttempt
from tests.fixtures.payments import PayBench

WECHAT_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Mobile/15E148 MicroMessenger/8.0.50(0x1800322d) NetType/WIFI Language/zh_CN"
)


def wechat_session(bench: PayBench, openid: str) -> requests.Session:
    """A WeChat in-app browser whose user is ``openid`` at the OAuth stand-in."""
    session = requests.Session()
    session.headers["User-Agent"] = WECHAT_UA
    session.cookies.set("sandbox_openid", openid, domain="127.0.0.1")
    return session


def attempts(bench: PayBench) -> int:
    with bench.db.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(PaymentAttempt)) or 0)


def test_the_page_shows_the_bill_in_chinese_with_the_native_qr_outside_wechat(paybench: PayBench) -> None:
    number = paybench.issue_bill(3_800_000)
    page = requests.get(paybench.pay_url(number), timeout=10)
    assert page.status_code == 200
    for text in (
        number,
        "HT-2026-118",
        "首期款",
        "¥38,000.00",
        "¥0.00",
        "2026年12月10日",
        "待支付",
        "扫码支付",
    ):
        assert text in page.text
    assert "/qr.png" in page.text and "WeixinJSBridge" not in page.text


def test_the_qr_image_decodes_to_the_code_url_and_is_reused(paybench: PayBench) -> None:
    number = paybench.issue_bill(3_800_000)
    first = requests.get(paybench.pay_url(number) + "/qr.png", timeout=10)
    second = requests.get(paybench.pay_url(number) + "/qr.png", timeout=10)
    assert first.headers["Content-Type"] == "image/png" and first.content == second.content
    decoded = [r.text for r in zxingcpp.read_barcodes(Image.open(io.BytesIO(first.content)))]
    orders = paybench.pay.orders()
    assert len(orders) == 1 and attempts(paybench) == 1
    assert decoded == [orders[0]["code_url"]] and orders[0]["total"] == 3_800_000


def test_a_partial_amount_outside_the_limits_is_refused_politely(paybench: PayBench) -> None:
    number = paybench.issue_bill(3_800_000)
    too_much = requests.get(paybench.pay_url(number), params={"amount": "38000.01"}, timeout=10)
    too_little = requests.get(paybench.pay_url(number), params={"amount": "0.5"}, timeout=10)
    fine = requests.get(paybench.pay_url(number), params={"amount": "1万"}, timeout=10)
    assert "金额不能超过待付金额 ¥38,000.00" in too_much.text
    assert "单次支付金额不能低于 ¥1.00" in too_little.text
    assert "qr.png?amount_fen=1000000" in fine.text
    assert attempts(paybench) == 0  # nothing opened until the image is fetched


def test_an_invalid_or_expired_link_gets_a_chinese_page(paybench: PayBench, monkeypatch) -> None:
    number = paybench.issue_bill()
    bad = requests.get(paybench.url + "/pay/not-a-token", timeout=10)
    assert bad.status_code == 404 and "链接无效" in bad.text
    import itsdangerous.timed

    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: 1_000_000_000.0)
    old = Links(paybench.app.config["SECRET_KEY"], paybench.url).pay_token(number)
    monkeypatch.undo()
    expired = requests.get(f"{paybench.url}/pay/{old}", timeout=10)
    assert expired.status_code == 410 and "链接已过期" in expired.text


def test_inside_wechat_without_an_openid_the_page_redirects_to_oauth(paybench: PayBench) -> None:
    url = paybench.pay_url(paybench.issue_bill())  # one token: a new one each second would differ
    answer = requests.get(url, headers={"User-Agent": WECHAT_UA}, allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    location = answer.headers["Location"]
    assert location.startswith(f"{paybench.wechat_api_url}/connect/oauth2/authorize?")
    assert location.endswith("#wechat_redirect")
    query = parse_qs(urlsplit(location).query)
    assert query["appid"] == [paybench.credentials.app_id]
    assert query["redirect_uri"] == [url + "/oauth"]
    assert query["response_type"] == ["code"] and query["scope"] == ["snsapi_base"]
    assert query["state"][0] and len(query["state"][0]) <= 128


def test_oauth_then_jsapi_gives_bridge_parameters_signed_by_the_merchant(paybench: PayBench) -> None:
    number = paybench.issue_bill(3_800_000)
    browser = wechat_session(paybench, "o_customer_zhang")
    page = browser.get(paybench.pay_url(number), timeout=10)
    assert page.status_code == 200 and 'id="pay-button"' in page.text and "qr.png" not in page.text

    answer = browser.post(paybench.pay_url(number) + "/jsapi", json={"amount": "10000"}, timeout=10)

    assert answer.status_code == 200, answer.text
    params = answer.json()["params"]
    assert params["appId"] == paybench.credentials.app_id and params["signType"] == "RSA"
    assert params["package"].startswith("prepay_id=") and params["timeStamp"].isdigit()
    message = f"{params['appId']}\n{params['timeStamp']}\n{params['nonceStr']}\n{params['package']}\n"
    key = serialization.load_pem_public_key(paybench.credentials.merchant_public_key_file.read_bytes())
    key.verify(base64.b64decode(params["paySign"]), message.encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr, call-arg]
    order = paybench.pay.order(answer.json()["out_trade_no"])
    assert (order["openid"], order["total"]) == ("o_customer_zhang", 1_000_000)
    with paybench.db.transaction() as s:
        assert s.execute(select(Customer.openid)).scalar_one() == "o_customer_zhang"  # bound on first payment


def test_a_snapshot_user_is_refused_and_not_bound(paybench: PayBench) -> None:
    number = paybench.issue_bill()
    paybench.oauth.add_user("o_snapshot_user", snapshot=True)
    page = wechat_session(paybench, "o_snapshot_user").get(paybench.pay_url(number), timeout=10)
    assert page.status_code == 403 and "快照" in page.text
    with paybench.db.transaction() as s:
        assert s.execute(select(Customer.openid)).scalar_one() is None


def test_an_oauth_callback_cannot_be_replayed(paybench: PayBench) -> None:
    url = paybench.pay_url(paybench.issue_bill())
    browser = wechat_session(paybench, "o_customer_li")
    first = browser.get(url, allow_redirects=False, timeout=10)
    consent = browser.get(first.headers["Location"].split("#")[0], allow_redirects=False, timeout=10)
    callback = consent.headers["Location"]
    assert (
        browser.get(callback, allow_redirects=False, timeout=10)
        .headers["Location"]
        .endswith(urlsplit(url).path)
    )
    stranger = requests.Session()
    stranger.headers["User-Agent"] = WECHAT_UA
    replay = stranger.get(callback, allow_redirects=False, timeout=10)
    assert replay.status_code == 302 and "/connect/oauth2/authorize" in replay.headers["Location"]


def test_jsapi_without_oauth_is_refused(paybench: PayBench) -> None:
    number = paybench.issue_bill()
    answer = requests.post(paybench.pay_url(number) + "/jsapi", json={}, timeout=10)
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "oauth_required"


def test_the_status_json_follows_the_bill(paybench: PayBench) -> None:
    number = paybench.issue_bill(3_800_000)
    before = requests.get(paybench.pay_url(number) + "/status", timeout=10).json()
    assert (before["status"], before["paid_fen"], before["outstanding_fen"]) == ("open", 0, 3_800_000)
    requests.get(paybench.pay_url(number) + "/qr.png?amount_fen=1000000", timeout=10)
    paybench.pay.pay(paybench.pay.orders()[0]["out_trade_no"])
    from tests.fixtures.wechatpay_standin import wait_until

    after = wait_until(
        lambda: (s := requests.get(paybench.pay_url(number) + "/status", timeout=10).json())["paid_fen"] and s
    )
    assert (after["status"], after["status_label"], after["outstanding_text"]) == (
        "partially_paid",
        "部分已付",
        "¥28,000.00",
    )


def test_a_paid_bill_shows_no_pay_controls(paybench: PayBench) -> None:
    number = paybench.issue_bill(100_000)
    requests.get(paybench.pay_url(number) + "/qr.png", timeout=10)
    paybench.pay.pay(paybench.pay.orders()[0]["out_trade_no"])
    from tests.fixtures.wechatpay_standin import wait_until

    wait_until(lambda: _status(paybench, number) == "paid")
    page = requests.get(
        paybench.pay_url(number), headers={"User-Agent": WECHAT_UA}, allow_redirects=False, timeout=10
    )
    assert page.status_code == 200 and "账单已付清" in page.text and "pay-button" not in page.text
    qr = requests.get(paybench.pay_url(number) + "/qr.png", timeout=10)
    assert qr.status_code == 409


def _status(bench: PayBench, number: str) -> str:
    with bench.db.transaction() as s:
        return str(s.execute(select(Bill.status).where(Bill.number == number)).scalar_one())


@pytest.mark.postgres
def test_the_status_json_never_shows_success_beside_the_bill_before_that_payment(
    paybench_on_pg: PayBench,
) -> None:
    """On PostgreSQL each statement reads its own snapshot: a payment committed between the status
    request's two reads must not give 支付成功 next to the old outstanding amount."""
    from flask import has_request_context, request
    from sqlalchemy import event

    from tests.fixtures.wechatpay_standin import wait_until

    bench = paybench_on_pg
    number = bench.issue_bill(3_800_000)
    requests.get(bench.pay_url(number) + "/qr.png?amount_fen=1000000", timeout=10)
    out_trade_no = bench.pay.orders()[0]["out_trade_no"]
    fired: list[str] = []

    def pay_between_the_two_reads(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if fired or not (has_request_context() and request.path.endswith("/status")):
            return
        fired.append(statement)  # after the status request's first read:
        bench.pay.pay(out_trade_no)  # the notification is applied and committed by another thread
        wait_until(lambda: _paid_fen(bench, number) == 1_000_000)

    engine = bench.db.engine
    event.listen(engine, "after_cursor_execute", pay_between_the_two_reads)
    try:
        view = requests.get(bench.pay_url(number) + f"/status?attempt={out_trade_no}", timeout=30).json()
    finally:
        event.remove(engine, "after_cursor_execute", pay_between_the_two_reads)
    assert fired, "the payment was not slipped in between the status request's reads"
    succeeded = view["attempt"] is not None and view["attempt"]["status"] == "succeeded"
    assert not succeeded or view["paid_fen"] == 1_000_000, view  # never 支付成功 beside the old amount


def _paid_fen(bench: PayBench, number: str) -> int:
    with bench.db.read() as s:
        return int(s.execute(select(Bill.paid_fen).where(Bill.number == number)).scalar_one())
