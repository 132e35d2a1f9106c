"""The Official Account stand-in over HTTP: wire behaviour, error switches, pushes, the control API."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from sandbox import push_client as pc
from sandbox.wechat_api.rules import invalid_keys


def _token(api) -> str:
    c = api.credentials
    res = api.api("GET", "/cgi-bin/token",
                  params={"grant_type": "client_credential", "appid": c.app_id, "secret": c.app_secret})
    return res["access_token"]


def _template(api, token: str, openid: str, data: dict | None = None) -> dict:
    body = {"touser": openid, "template_id": "TPL_bill_paid_0001",
            "data": data or {"thing1": {"value": "水电改造 首期款"}, "amount2": {"value": "¥38,000.00"}}}
    return api.api("POST", "/cgi-bin/message/template/send", params={"access_token": token}, json=body)


def _custom(api, token: str, openid: str, text: str = "您好") -> dict:
    body = {"touser": openid, "msgtype": "text", "text": {"content": text}}
    return api.api("POST", "/cgi-bin/message/custom/send", params={"access_token": token}, json=body)


# ------------------------------------------------------------------------------- token endpoint


def test_token_credentials_are_checked(wechat_api):
    c = wechat_api.credentials
    bad_secret = wechat_api.api("GET", "/cgi-bin/token", params={
        "grant_type": "client_credential", "appid": c.app_id, "secret": "x" * 32})
    bad_appid = wechat_api.api("GET", "/cgi-bin/token", params={
        "grant_type": "client_credential", "appid": "wx0000000000000000", "secret": c.app_secret})
    assert bad_secret["errcode"] == 40125 and " rid: " in bad_secret["errmsg"]
    assert bad_appid["errcode"] == 40013
    assert wechat_api.control("GET", "counters")["token_fetches"] == 0


def test_new_token_leaves_previous_valid_for_five_minutes(wechat_api):
    first = _token(wechat_api)
    second = _token(wechat_api)
    assert first != second
    openid = wechat_api.control("POST", "users", {})["openid"]
    assert "msgid" in _template(wechat_api, first, openid)
    wechat_api.control("POST", "clock/advance", {"seconds": 301})
    assert _template(wechat_api, first, openid)["errcode"] == 40001
    assert "msgid" in _template(wechat_api, second, openid)
    wechat_api.control("POST", "clock/advance", {"seconds": 7200})
    assert _template(wechat_api, second, openid)["errcode"] == 42001
    assert wechat_api.control("GET", "counters")["token_fetches"] == 2


def test_token_switches_invalidate_expire_and_missing(wechat_api):
    token = _token(wechat_api)
    openid = wechat_api.control("POST", "users", {})["openid"]
    wechat_api.control("POST", "token/invalidate")
    assert _template(wechat_api, token, openid)["errcode"] == 40001
    token = _token(wechat_api)
    wechat_api.control("POST", "token/expire")
    assert _template(wechat_api, token, openid)["errcode"] == 42001
    missing = wechat_api.api("POST", "/cgi-bin/message/template/send", json={})
    assert missing["errcode"] == 41001


def test_stable_token_same_while_valid_and_force_refresh(wechat_api):
    c = wechat_api.credentials
    body = {"grant_type": "client_credential", "appid": c.app_id, "secret": c.app_secret}
    a = wechat_api.api("POST", "/cgi-bin/stable_token", json=body)
    b = wechat_api.api("POST", "/cgi-bin/stable_token", json=body)
    assert a["access_token"] == b["access_token"] and 7100 < b["expires_in"] <= 7200
    forced = wechat_api.api("POST", "/cgi-bin/stable_token", json={**body, "force_refresh": True})
    assert forced["access_token"] != a["access_token"]
    counters = wechat_api.control("GET", "counters")
    assert counters["stable_token_calls"] == 3 and counters["stable_token_issued"] == 2


def test_request_log_masks_secrets(wechat_api):
    token = _token(wechat_api)
    wechat_api.control("POST", "users", {"openid": "oSandboxUser0000000000000001"})
    _template(wechat_api, token, "oSandboxUser0000000000000001")
    log = wechat_api.control("GET", "requests")
    text = str(log)
    assert wechat_api.credentials.app_secret not in text and token not in text
    assert [r["path"] for r in log] == ["/cgi-bin/token", "/cgi-bin/message/template/send"]
    assert "secret=%2A%2A%2A" in log[0]["query"]
    assert log[1]["body"]["touser"] == "oSandboxUser0000000000000001" and log[1]["errcode"] == 0


# ---------------------------------------------------------------------------- template messages


def test_template_send_pushes_job_finish_event(wechat_api, wechat_recorder):
    wechat_api.control("POST", "push-target", {"url": wechat_recorder.url, "mode": "safe"})
    openid = wechat_api.control("POST", "users", {})["openid"]
    msgid = _template(wechat_api, _token(wechat_api), openid)["msgid"]
    def finished(x) -> bool:
        return getattr(x, "event", "") == "templatesendjobfinish"

    msgs = wechat_recorder.wait_for(lambda m: any(finished(x) for x in m))
    event = next(x for x in msgs if finished(x))
    assert event.source == openid and event.target == wechat_api.credentials.original_id
    assert int(event.id) == msgid and event.status == "success"
    sent = wechat_api.control("GET", f"templates?openid={openid}")
    assert [m["msgid"] for m in sent] == [msgid]
    assert sent[0]["data"]["amount2"]["value"] == "¥38,000.00"


def test_template_to_non_follower_and_unknown_openid(wechat_api):
    token = _token(wechat_api)
    openid = wechat_api.control("POST", "users", {"following": False})["openid"]
    assert _template(wechat_api, token, openid)["errcode"] == 43004
    assert _template(wechat_api, token, "oNeverSeen00000000000000000x")["errcode"] == 40003
    wechat_api.control("POST", f"users/{openid}/follow")
    assert "msgid" in _template(wechat_api, token, openid)
    wechat_api.control("POST", f"users/{openid}/unfollow")
    assert _template(wechat_api, token, openid)["errcode"] == 43004


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("thing1", "水电改造首期款水电改造首期款水电改造首期款"),  # 21 characters
        ("character_string2", "HT-2026-118 A"),  # space
        ("character_string2", "合同号"),
        ("character_string2", "A" * 33),
        ("amount3", "38000.005元"),
        ("amount3", "三万八千元"),
        ("amount3", "1234567890123"),
        ("time4", "2026-13-01 10:00"),
        ("time4", "明天上午"),
        ("phrase5", "已付款成功了"),
        ("phrase5", "paid"),
        ("thing1", ""),
    ],
)
def test_template_values_breaking_category_rules_get_47003(wechat_api, key, value):
    openid = wechat_api.control("POST", "users", {})["openid"]
    res = _template(wechat_api, _token(wechat_api), openid, {key: {"value": value}})
    assert res["errcode"] == 47003, (key, value)
    assert key in res["errmsg"]


def test_template_value_rules_accept_documented_forms():
    good = {
        "thing1": {"value": "水电改造 首期款"}, "character_string2": {"value": "RB-2026-0042"},
        "amount3": {"value": "38000.00元"}, "amount4": {"value": "¥38,000.00"}, "amount5": {"value": "38000"},
        "time6": {"value": "2026-11-26 10:00"}, "time7": {"value": "2026年11月26日 10:00"},
        "time8": {"value": "2026-11-26 10:00~2026-11-26 12:00"}, "phrase9": {"value": "已支付"},
        "number10": {"value": "3.5"}, "letter11": {"value": "ABC"}, "symbol12": {"value": "#"},
        "car_number13": {"value": "沪A12345"}, "name14": {"value": "张三"},
        "phone_number15": {"value": "13800138000"},
        "first": {"value": "任意"}, "keyword1": {"value": "x" * 100},
    }
    assert invalid_keys(good) == []


# ----------------------------------------------------------------------------- custom messages


def test_custom_message_window_and_count(wechat_api):
    token = _token(wechat_api)
    openid = wechat_api.control("POST", "users", {})["openid"]
    assert _custom(wechat_api, token, openid)["errcode"] == 45015  # never wrote
    wechat_api.control("PATCH", f"users/{openid}", {"last_message_ago": 47 * 3600})
    for _ in range(20):
        assert _custom(wechat_api, token, openid)["errcode"] == 0
    assert _custom(wechat_api, token, openid)["errcode"] == 45047
    wechat_api.control("POST", "clock/advance", {"seconds": 3601})
    assert _custom(wechat_api, token, openid)["errcode"] == 45015
    assert len(wechat_api.control("GET", f"custom?openid={openid}")) == 20


def test_user_message_through_push_client_opens_window(wechat_api, wechat_recorder):
    wechat_api.control("POST", "push-target", {"url": wechat_recorder.url, "mode": "compatible"})
    openid = "oPushedUser00000000000000001"
    out = wechat_api.control("POST", f"users/{openid}/send", {"type": "text", "content": "查账单"})
    assert out["push"]["verdict"] == "no_reply" and out["push"]["ok"] is True
    assert wechat_recorder.messages[0].content == "查账单"
    token = _token(wechat_api)
    assert _custom(wechat_api, token, openid)["errcode"] == 0  # follows and wrote: inside the window
    assert "msgid" in _template(wechat_api, token, openid)


# ------------------------------------------------------------------------ media, QR, info, misc


def test_media_upload_bytes_are_retrievable(wechat_api):
    token = _token(wechat_api)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    res = wechat_api.api("POST", "/cgi-bin/media/upload", params={"access_token": token, "type": "image"},
                         files={"media": ("qr.png", png, "image/png")})
    assert res["type"] == "image" and res["media_id"]
    got = requests.get(f"{wechat_api.url}/_control/media/{res['media_id']}", timeout=5)
    assert got.content == png and got.headers["Content-Type"] == "image/png"
    missing = wechat_api.api("POST", "/cgi-bin/media/upload", params={"access_token": token, "type": "image"})
    assert missing["errcode"] == 41005


def test_qr_scan_pushes_subscribe_then_scan(wechat_api, wechat_recorder):
    wechat_api.control("POST", "push-target", {"url": wechat_recorder.url, "mode": "plaintext"})
    token = _token(wechat_api)
    qr = wechat_api.api("POST", "/cgi-bin/qrcode/create", params={"access_token": token}, json={
        "expire_seconds": 600, "action_name": "QR_STR_SCENE",
        "action_info": {"scene": {"scene_str": "bind:C-001"}}})
    assert qr["expire_seconds"] == 600 and qr["url"].startswith("http://weixin.qq.com/q/")
    openid = "oScanner00000000000000000001"
    first = wechat_api.control("POST", "qrcode/scan", {"ticket": qr["ticket"], "openid": openid})
    second = wechat_api.control("POST", "qrcode/scan", {"ticket": qr["ticket"], "openid": openid})
    assert first["push"]["ok"] and second["push"]["ok"]
    sub, scan = wechat_recorder.messages
    assert sub.event == "subscribe_scan" and sub.scene_id == "bind:C-001" and sub.ticket == qr["ticket"]
    assert scan.event == "scan" and scan.scene_id == "bind:C-001"
    info = wechat_api.api("GET", "/cgi-bin/user/info", params={"access_token": token, "openid": openid})
    assert info["subscribe"] == 1 and info["qr_scene_str"] == "bind:C-001"
    assert info["subscribe_scene"] == "ADD_SCENE_QR_CODE"


def test_menu_and_jsapi_ticket(wechat_api):
    token = _token(wechat_api)
    menu = {"button": [{"type": "click", "name": "我的账单", "key": "MY_BILLS"}]}
    res = wechat_api.api("POST", "/cgi-bin/menu/create", params={"access_token": token}, json=menu)
    assert res["errcode"] == 0
    assert wechat_api.control("GET", "menu") == menu
    too_many = {"button": [menu["button"][0]] * 4}
    res = wechat_api.api("POST", "/cgi-bin/menu/create", params={"access_token": token}, json=too_many)
    assert res["errcode"] == 40016
    t1 = wechat_api.api("GET", "/cgi-bin/ticket/getticket", params={"access_token": token, "type": "jsapi"})
    t2 = wechat_api.api("GET", "/cgi-bin/ticket/getticket", params={"access_token": token, "type": "jsapi"})
    assert t1["errcode"] == 0 and t1["ticket"] == t2["ticket"] and t1["expires_in"] <= 7200


def test_fail_next_fault(wechat_api):
    wechat_api.control("POST", "faults", {"fail_next": [{"errcode": -1, "path": "/cgi-bin/token"}]})
    c = wechat_api.credentials
    params = {"grant_type": "client_credential", "appid": c.app_id, "secret": c.app_secret}
    assert wechat_api.api("GET", "/cgi-bin/token", params=params)["errcode"] == -1
    assert "access_token" in wechat_api.api("GET", "/cgi-bin/token", params=params)


# ------------------------------------------------------------------------------------- OAuth


def _authorize(api, openid: str | None, state: str = "s1", session: requests.Session | None = None):
    params = {"appid": api.credentials.app_id, "redirect_uri": "https://renopay.example/pay/abc?x=1",
              "response_type": "code", "scope": "snsapi_base", "state": state}
    if openid:
        params["sandbox_openid"] = openid
    http = session or requests
    return http.get(f"{api.url}/connect/oauth2/authorize", params=params, allow_redirects=False, timeout=5)


def _exchange(api, code: str) -> dict:
    c = api.credentials
    return api.api("GET", "/sns/oauth2/access_token", params={
        "appid": c.app_id, "secret": c.app_secret, "code": code, "grant_type": "authorization_code"})


def test_oauth_code_single_use_expiry_and_invalid(wechat_api):
    resp = _authorize(wechat_api, "oOAuthUser000000000000000001", state="a b/c")
    assert resp.status_code == 302
    loc = urlsplit(resp.headers["Location"])
    assert loc.netloc == "renopay.example" and loc.path == "/pay/abc"
    q = parse_qs(loc.query)
    assert q["x"] == ["1"] and q["state"] == ["a b/c"]
    code = q["code"][0]
    first = _exchange(wechat_api, code)
    assert first["openid"] == "oOAuthUser000000000000000001" and "is_snapshotuser" not in first
    assert _exchange(wechat_api, code)["errcode"] == 40163
    assert _exchange(wechat_api, "nonsense")["errcode"] == 40029
    again = _authorize(wechat_api, "oOAuthUser000000000000000001")
    late = parse_qs(urlsplit(again.headers["Location"]).query)
    wechat_api.control("POST", "clock/advance", {"seconds": 301})
    assert _exchange(wechat_api, late["code"][0])["errcode"] == 40029


def test_oauth_snapshot_user_and_cookie_choice(wechat_api):
    openid = wechat_api.control("POST", "users", {"snapshot": True})["openid"]
    browser = requests.Session()
    browser.get(f"{wechat_api.url}/_control/oauth/login", params={"openid": openid}, timeout=5)
    resp = _authorize(wechat_api, None, session=browser)
    code = parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]
    res = _exchange(wechat_api, code)
    assert res["openid"] == openid and res["is_snapshotuser"] == 1 and res["scope"] == "snsapi_base"


def test_oauth_without_user_shows_chooser_page(wechat_api):
    wechat_api.control("POST", "users", {"nickname": "张三"})
    resp = _authorize(wechat_api, None)
    assert resp.status_code == 200 and "请选择模拟的微信用户" in resp.text and "张三" in resp.text


# --------------------------------------------------------------------------------- push client


def test_push_client_url_verification(wechat_credentials, wechat_recorder):
    c = wechat_credentials
    client = pc.PushClient(wechat_recorder.url, c.token, c.app_id, c.encoding_aes_key, c.original_id)
    assert client.verify_url("1234567890").ok
    wrong = pc.PushClient(wechat_recorder.url, "wrong-token", c.app_id, c.encoding_aes_key, c.original_id)
    res = wrong.verify_url()
    assert not res.ok and res.status_code == 403


def test_push_client_retries_slow_target_with_same_msgid(wechat_credentials, wechat_recorder):
    c = wechat_credentials
    # The first answer comes long after the timeout; the retry has a whole second, so a busy CI machine
    # cannot turn the second attempt into a third.
    wechat_recorder.delay_first = 2.0
    client = pc.PushClient(wechat_recorder.url, c.token, c.app_id, c.encoding_aes_key, c.original_id,
                           mode="safe", timeout=1.0)
    msg = pc.text_message(c.original_id, "oRetry000000000000000000001", "确认")
    result = client.push(msg)
    assert result.ok and result.attempts == 2
    assert wechat_recorder.raw_msg_ids == [str(msg.msg_id), str(msg.msg_id)]


def test_push_client_gives_up_after_three_retries(wechat_credentials):
    c = wechat_credentials
    from flask import Flask

    from tests.support.servers import serving

    calls: list[float] = []
    app = Flask("slow")

    @app.post("/wechat")
    def slow():
        calls.append(time.monotonic())
        time.sleep(0.4)
        return "success"

    with serving(app) as srv:
        client = pc.PushClient(srv.url + "/wechat", c.token, c.app_id, c.encoding_aes_key, c.original_id,
                               mode="plaintext", timeout=0.1, max_retries=3)
        result = client.push(pc.click_event(c.original_id, "oSlow0000000000000000000001", "K"))
        assert result.verdict is pc.Verdict.FAILED and result.attempts == 4
        assert result.user_sees == "该公众号暂时无法提供服务"
        deadline = time.monotonic() + 5
        while len(calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(calls) == 4


@pytest.mark.parametrize("mode", ["plaintext", "compatible", "safe"])
def test_push_client_judges_replies_in_each_mode(wechat_credentials, wechat_recorder, mode):
    c = wechat_credentials

    def reply(msg):
        return pc.render_xml({"ToUserName": msg.source, "FromUserName": msg.target, "CreateTime": 1,
                              "MsgType": "text", "Content": f"收到：{msg.content}"})

    wechat_recorder.reply = reply
    client = pc.PushClient(wechat_recorder.url, c.token, c.app_id, c.encoding_aes_key, c.original_id,
                           mode=mode)
    result = client.push(pc.text_message(c.original_id, "oMode00000000000000000000001", "你好"))
    assert result.verdict is pc.Verdict.REPLY and result.reply["Content"] == "收到：你好"
    wechat_recorder.reply = None
    wechat_recorder.body, wechat_recorder.status = b"internal error", 500
    failed = client.push(pc.text_message(c.original_id, "oMode00000000000000000000001", "你好"))
    assert failed.verdict is pc.Verdict.FAILED and failed.status_code == 500 and failed.attempts == 1
