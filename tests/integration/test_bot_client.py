"""bot/client.py (unmodified wechatpy underneath) and bot/tokens.py against the Official Account stand-in."""

from __future__ import annotations

import threading
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask import Flask

from bot.client import (
    AccessTokenRejected,
    OAuthIdentity,
    PermanentWeChatError,
    RetryableWeChatError,
    WeChatApiClient,
)
from bot.tokens import FetchedToken, MemoryTokenStore, RedisTokenStore, TokenRefresher
from tests.fixtures.database import redis_reachable, require_or_skip
from tests.support.servers import serving

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
BILL_DATA = {"character_string1": "RB-2026-0042", "thing2": "水电改造 首期款", "amount3": "¥38,000.00",
             "time4": "2026-11-26 10:00"}


def _follower(api, wrote_recently: bool = True) -> str:
    return api.control("POST", "users", {"wrote_recently": wrote_recently})["openid"]


def _count(api, name: str) -> int:
    return api.control("GET", "counters")[name]


def _paths(api) -> list[str]:
    return [r["path"] for r in api.control("GET", "requests")]


# --------------------------------------------------------------------- acceptance: wechatpy via bot/client


def test_wechatpy_client_does_everything_through_the_rewritten_base(wechat_api, make_wechat_client):
    client = make_wechat_client(grant_endpoint="token")
    openid = _follower(wechat_api)

    sent = client.send_template(openid, "TPL_bill_opened_01", BILL_DATA, url="https://renopay.example/pay/x")
    client.send_custom_text(openid, "您的账单已生成")
    media_id = client.upload_image(PNG, "bill.png")
    client.send_custom_image(openid, media_id)
    client.send_custom_news(openid, "账单", "首期款 ¥38,000.00", "https://renopay.example/pay/x")
    qr = client.create_qr_scene("bind:C-001", expire_seconds=3600)

    assert _count(wechat_api, "token_fetches") == 1
    assert _paths(wechat_api) == ["/cgi-bin/token", "/cgi-bin/message/template/send",
                                  "/cgi-bin/message/custom/send", "/cgi-bin/media/upload",
                                  "/cgi-bin/message/custom/send", "/cgi-bin/message/custom/send",
                                  "/cgi-bin/qrcode/create"]
    templates = wechat_api.control("GET", f"templates?openid={openid}")
    assert [t["msgid"] for t in templates] == [sent.msgid]
    assert templates[0]["data"]["amount3"] == {"value": "¥38,000.00"}
    assert templates[0]["url"] == "https://renopay.example/pay/x"
    custom = wechat_api.control("GET", f"custom?openid={openid}")
    assert [m["msgtype"] for m in custom] == ["text", "image", "news"]
    assert custom[1]["image"]["media_id"] == media_id
    assert requests.get(f"{wechat_api.url}/_control/media/{media_id}", timeout=5).content == PNG
    assert qr.expire_seconds == 3600
    assert qr.ticket in {q["ticket"] for q in wechat_api.control("GET", "qrcodes")}
    assert qr.image_url.startswith("https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket=")


def test_recovers_from_invalidated_token_with_exactly_one_extra_fetch(wechat_api, make_wechat_client):
    client = make_wechat_client(grant_endpoint="token")
    openid = _follower(wechat_api)
    client.send_template(openid, "TPL_1", BILL_DATA)
    assert _count(wechat_api, "token_fetches") == 1

    wechat_api.control("POST", "token/invalidate")
    client.send_template(openid, "TPL_1", BILL_DATA)
    assert _count(wechat_api, "token_fetches") == 2  # exactly one extra fetch
    assert len(wechat_api.control("GET", "templates")) == 2

    wechat_api.control("POST", "token/expire")
    client.send_custom_text(openid, "再试一次")
    assert _count(wechat_api, "token_fetches") == 3


def test_a_stand_in_that_keeps_answering_40001_costs_one_fetch_per_call(wechat_api, make_wechat_client):
    client = make_wechat_client(grant_endpoint="token")
    openid = _follower(wechat_api)
    client.send_template(openid, "TPL_1", BILL_DATA)
    wechat_api.control("POST", "faults", {"reject_tokens": True})
    before = len(wechat_api.control("GET", "requests?path=/cgi-bin/message/template/send"))

    with pytest.raises(AccessTokenRejected) as info:
        client.send_template(openid, "TPL_1", BILL_DATA)

    assert info.value.errcode == 40001 and isinstance(info.value, RetryableWeChatError)
    assert _count(wechat_api, "token_fetches") == 2  # the bound: one refresh, no recursion
    after = len(wechat_api.control("GET", "requests?path=/cgi-bin/message/template/send"))
    assert after - before == 2  # the call and its single retry


def test_stable_token_grant_recovers_with_force_refresh(wechat_api, make_wechat_client):
    client = make_wechat_client()  # default: stable_token
    openid = _follower(wechat_api)
    client.send_custom_text(openid, "你好")
    wechat_api.control("POST", "token/invalidate")
    client.send_custom_text(openid, "你好")
    counters = wechat_api.control("GET", "counters")
    assert counters["token_fetches"] == 0
    assert counters["stable_token_calls"] == 2 and counters["stable_token_issued"] == 2
    forced = wechat_api.control("GET", "requests?path=/cgi-bin/stable_token")
    assert [r["body"]["force_refresh"] for r in forced] == [False, True]
    assert {r["body"]["secret"] for r in forced} == {"***"}  # the request log never keeps secrets


def test_concurrent_readers_sharing_a_store_cause_one_fetch(wechat_api, make_wechat_client):
    store = MemoryTokenStore()
    clients = [make_wechat_client(grant_endpoint="token", token_store=store) for _ in range(2)]
    openid = _follower(wechat_api)
    clients[0].send_template(openid, "TPL_1", BILL_DATA)
    wechat_api.control("POST", "token/invalidate")

    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        try:
            barrier.wait(5)
            clients[i % 2].send_custom_text(openid, f"第{i}条")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert _count(wechat_api, "token_fetches") == 2
    assert len(wechat_api.control("GET", f"custom?openid={openid}")) == 8


# ----------------------------------------------------------------------------------- errors


def test_permanent_errors_carry_errcode(wechat_api, make_wechat_client):
    client = make_wechat_client(grant_endpoint="token")
    stranger = wechat_api.control("POST", "users", {"following": False})["openid"]
    silent = _follower(wechat_api, wrote_recently=False)
    cases = [
        (lambda: client.send_template(stranger, "TPL_1", BILL_DATA), 43004),
        (lambda: client.send_template("oUnknown000000000000000000001", "TPL_1", BILL_DATA), 40003),
        (lambda: client.send_template(silent, "TPL_1", {"thing1": "超" * 21}), 47003),
        (lambda: client.send_custom_text(silent, "你好"), 45015),
    ]
    for call, code in cases:
        with pytest.raises(PermanentWeChatError) as info:
            call()
        assert info.value.errcode == code
    assert _count(wechat_api, "token_fetches") == 1


def test_retryable_errors_busy_and_5xx(wechat_api, make_wechat_client):
    client = make_wechat_client(grant_endpoint="token")
    openid = _follower(wechat_api)
    client.send_custom_text(openid, "预热")
    wechat_api.control("POST", "faults", {"fail_next": [
        {"errcode": -1, "path": "/cgi-bin/message/custom/send"},
        {"http_status": 503, "path": "/cgi-bin/message/custom/send"},
        {"errcode": 45009, "path": "/cgi-bin/message/custom/send"},
    ]})
    seen = []
    for _ in range(3):
        with pytest.raises(RetryableWeChatError) as info:
            client.send_custom_text(openid, "忙")
        seen.append((info.value.errcode, info.value.http_status))
    assert seen == [(-1, None), (None, 503), (45009, None)]
    client.send_custom_text(openid, "恢复")


def test_every_call_has_a_timeout_including_wechatpy_token_fetch():
    app = Flask("slow-wechat")
    release = threading.Event()

    @app.get("/cgi-bin/token")
    def slow_token():
        release.wait(5)
        return {"access_token": "x", "expires_in": 7200}

    with serving(app) as srv:
        client = WeChatApiClient("wx0000000000000000", "s" * 32, api_base=srv.url, timeout=0.3,
                                 grant_endpoint="token")
        started = time.monotonic()
        with pytest.raises(RetryableWeChatError) as info:
            client.send_custom_text("oUser", "hi")
        assert info.value.errmsg == "timeout" and time.monotonic() - started < 3
        release.set()


def test_network_failure_is_retryable():
    with serving(Flask("gone")) as srv:
        url = srv.url
    client = WeChatApiClient("wx0000000000000000", "s" * 32, api_base=url, timeout=1)
    with pytest.raises(RetryableWeChatError):
        client.get_user_info("oUser")


def test_wrong_secret_is_permanent_not_a_retry_loop(wechat_api, make_wechat_client):
    client = WeChatApiClient(wechat_api.credentials.app_id, "0" * 32, api_base=wechat_api.url,
                             grant_endpoint="token")
    with pytest.raises(PermanentWeChatError) as info:
        client.send_custom_text("oUser", "hi")
    assert info.value.errcode == 40125
    assert len(wechat_api.control("GET", "requests")) == 1


# --------------------------------------------------------------------------- user, menu, jsapi


def test_user_info_menu_and_cached_jsapi_ticket(wechat_api, make_wechat_client):
    client = make_wechat_client(grant_endpoint="token")
    openid = _follower(wechat_api)
    info = client.get_user_info(openid)
    assert info.openid == openid and info.subscribed and info.subscribe_time
    wechat_api.control("POST", f"users/{openid}/unfollow")
    assert client.get_user_info(openid).subscribed is False
    client.create_menu({"button": [{"type": "view", "name": "我的账单", "url": "https://renopay.example/"}]})
    assert wechat_api.control("GET", "menu")["button"][0]["name"] == "我的账单"
    assert client.get_jsapi_ticket() == client.get_jsapi_ticket()
    assert _count(wechat_api, "jsapi_ticket_fetches") == 1


# ------------------------------------------------------------------------------------- OAuth


def _follow_authorize(url: str, openid: str) -> dict[str, list[str]]:
    resp = requests.get(url.split("#", 1)[0], params={"sandbox_openid": openid}, allow_redirects=False,
                        timeout=5)
    assert resp.status_code == 302
    return parse_qs(urlsplit(resp.headers["Location"]).query)


def test_oauth_round_trip_and_single_use_code(wechat_api, make_wechat_client):
    client = make_wechat_client()
    state = "bill=RB-2026-0042&sig=a/b+c"
    url = client.oauth_authorize_url("https://renopay.example/pay/tok?x=1", state)
    prefix = f"{wechat_api.url}/connect/oauth2/authorize?appid={client.app_id}&redirect_uri=https%3A"
    assert url.startswith(prefix)
    assert "scope=snsapi_base" in url and url.endswith("#wechat_redirect")
    assert "state=bill%3DRB-2026-0042%26sig%3Da%2Fb%2Bc" in url

    openid = _follower(wechat_api)
    q = _follow_authorize(url, openid)
    assert q["state"] == [state] and q["x"] == ["1"]
    assert client.exchange_oauth_code(q["code"][0]) == OAuthIdentity(openid, False, "snsapi_base")
    with pytest.raises(PermanentWeChatError) as reused:
        client.exchange_oauth_code(q["code"][0])
    assert reused.value.errcode == 40163
    with pytest.raises(PermanentWeChatError) as invalid:
        client.exchange_oauth_code("bogus")
    assert invalid.value.errcode == 40029


def test_oauth_snapshot_user(wechat_api, make_wechat_client):
    client = make_wechat_client()
    openid = wechat_api.control("POST", "users", {"snapshot": True})["openid"]
    q = _follow_authorize(client.oauth_authorize_url("https://renopay.example/pay/t", "s"), openid)
    identity = client.exchange_oauth_code(q["code"][0])
    assert identity.is_snapshot is True and identity.openid == openid


def test_production_defaults_point_at_wechat():
    client = WeChatApiClient("wx0000000000000000", "s" * 32)
    url = client.oauth_authorize_url("https://renopay.example/cb", "s")
    assert url.startswith("https://open.weixin.qq.com/connect/oauth2/authorize?appid=wx0000000000000000")
    assert client.api_base == "https://api.weixin.qq.com"


# ------------------------------------------------------------------------------------ token store


def test_refresher_refresh_if_due_and_stale_check():
    fetched: list[bool] = []

    def fetch(force: bool) -> FetchedToken:
        fetched.append(force)
        return FetchedToken(f"t{len(fetched)}", 7200)

    store = MemoryTokenStore()
    refresher = TokenRefresher(store, fetch, margin=300)
    assert refresher.refresh_if_due() is True and fetched == [False]
    assert refresher.current() == "t1"
    assert refresher.refresh(stale="someone-elses-old-token") == "t1" and fetched == [False]
    assert refresher.refresh(stale="t1") == "t2" and fetched == [False, True]
    assert refresher.refresh_if_due() is False
    store.set("t2", time.time() + 200)  # within the margin
    assert refresher.refresh_if_due() is True and fetched == [False, True, True]


@pytest.fixture
def redis_client():
    import redis

    url = "redis://127.0.0.1:6379/0"
    reason = redis_reachable(url)
    if reason:
        require_or_skip(reason, "RENOPAY_REQUIRE_REDIS")
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    prefix = f"test-renopay-{uuid.uuid4().hex}"
    yield client, prefix
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


def test_redis_store_round_trip_and_ttl(redis_client):
    client, prefix = redis_client
    store = RedisTokenStore(client, "wxabc", prefix=prefix)
    assert store.get() is None
    store.set("TOKEN-1", time.time() + 100)
    got = store.get()
    assert got is not None and got.value == "TOKEN-1" and 95 < got.remaining() <= 100.01
    assert 0 < client.ttl(f"{prefix}:wxabc:access_token") <= 100
    other_app = RedisTokenStore(client, "wxdef", prefix=prefix)
    assert other_app.get() is None


def test_redis_shared_store_two_processes_one_fetch(redis_client, wechat_api, make_wechat_client):
    client, prefix = redis_client
    app_id = wechat_api.credentials.app_id
    # two "processes": separate store objects and locks, same Redis key
    workers = [
        make_wechat_client(grant_endpoint="token", token_store=RedisTokenStore(client, app_id, prefix=prefix))
        for _ in range(2)
    ]
    openid = _follower(wechat_api)
    workers[0].send_custom_text(openid, "一")
    workers[1].send_custom_text(openid, "二")
    assert _count(wechat_api, "token_fetches") == 1  # the second worker read the shared token
    wechat_api.control("POST", "token/invalidate")
    threads = [threading.Thread(target=w.send_custom_text, args=(openid, "三")) for w in workers * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert _count(wechat_api, "token_fetches") == 2
    assert len(wechat_api.control("GET", f"custom?openid={openid}")) == 8
