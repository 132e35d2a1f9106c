"""The sandbox as `make run` serves it: RenoPay on one port with both stand-ins mounted under /sandbox/,
the chat simulator's JSON API, the built-in ERP receiver and the demo seed — all over real HTTP."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from app import create_app
from config import Settings
from db import Database
from erp_sync import scheduler, start_in_process
from erp_sync.webhook import signature_header
from payments.models import Bill, BillStatus, Staff
from sandbox import erp_receiver, seed
from sandbox.keys import SandboxCredentials
from sandbox.simulator import views
from tests.fixtures.live import free_port
from tests.support.servers import RunningServer, start_server


@dataclass
class Sandbox:
    app: Flask
    url: str
    db: Database
    server: RunningServer

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, f"{self.url}/sandbox/api{path}", timeout=15, **kwargs)

    def say(self, openid: str, text: str) -> dict[str, Any]:
        answer = self.api("POST", "/send", json={"openid": openid, "text": text})
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def feed(self, openid: str) -> list[dict[str, Any]]:
        return list(self.api("GET", f"/feed?openid={openid}").json()["items"])

    def erp(self) -> list[dict[str, Any]]:
        return list(self.api("GET", "/panel").json()["erp"])


def serve_sandbox(database_url: str, creds: SandboxCredentials, db: Database) -> Sandbox:
    """RenoPay exactly as `make run` builds it (stand-ins mounted, built-in ERP, relay running),
    on a free port, with the demo data seeded."""
    seed.seed(db, Settings.max_bill_fen)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = Settings(database_url=database_url, public_base_url=url, sandbox=True,
                        instance_path=str(Path(creds.directory).parent), scheduler_enabled=False)
    app = create_app(settings)
    start_in_process(app)
    return Sandbox(app, url, app.extensions["renopay.db"], start_server(app, port))


@pytest.fixture
def sandbox(db: Database, database_url: str, sandbox_credentials: SandboxCredentials) -> Iterator[Sandbox]:
    running = serve_sandbox(database_url, sandbox_credentials, db)
    try:
        yield running
    finally:
        scheduler.stop(running.app)
        running.server.stop()
        running.db.dispose()


def wait_for(check: Callable[[], Any], what: str, seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def bill_number(text: str) -> str:
    found = re.search(r"B\d{4}-\d{4}", text)
    assert found, text
    return found.group(0)


def texts(items: list[dict[str, Any]]) -> list[str]:
    return [i.get("text", "") for i in items]


# -------------------------------------------------------------------------------------------- tests


def test_the_sandbox_serves_the_simulator_page_and_its_assets_locally(sandbox):
    page = requests.get(f"{sandbox.url}/sandbox/", timeout=10)

    assert page.status_code == 200
    assert "聊天模拟器" in page.text
    assert "http://" not in page.text.replace(sandbox.url, "") and "https://" not in page.text
    for asset in ("simulator.js", "simulator.css"):
        assert requests.get(f"{sandbox.url}/sandbox/static/{asset}", timeout=10).status_code == 200


def test_seeded_identities_are_listed_by_phone(sandbox):
    who = sandbox.api("GET", "/identities").json()

    assert [p["openid"] for p in who["staff"]] == [seed.FINANCE.openid, seed.SALES.openid]
    assert [c["openid"] for c in who["customers"]] == [seed.ZHANG.openid, seed.CHEN.openid]
    assert who["staff"][0]["label"] == "王会计（财务）"


def test_seeding_twice_changes_nothing(sandbox):
    assert seed.seed(sandbox.db, Settings.max_bill_fen) is False

    with sandbox.db.transaction() as s:
        statuses = sorted(str(b.status) for b in s.query(Bill))
    assert statuses == sorted([BillStatus.open, BillStatus.partially_paid, BillStatus.paid])


def test_a_staff_message_reaches_wechat_through_the_push_client_and_the_reply_is_shown(sandbox):
    answer = sandbox.say(seed.SALES.openid, "开单 张三 13800138000 2万 首期款")

    assert answer["verdict"] == "reply"
    assert "请核对账单" in answer["reply"]["text"]
    shown = texts(sandbox.feed(seed.SALES.openid))
    assert shown[:2] == ["开单 张三 13800138000 2万 首期款", answer["reply"]["text"]]


def test_an_opened_bill_reaches_the_customers_phone_as_a_template_message(sandbox):
    sandbox.say(seed.SALES.openid, "开单 陈女士 5000 尾款")
    number = bill_number(sandbox.say(seed.SALES.openid, "确认")["reply"]["text"])

    card = wait_for(lambda: [i for i in sandbox.feed(seed.CHEN.openid) if i["type"] == "template"
                             and any(r["value"] == number for r in i["rows"])], "the bill notice")
    assert "/pay/" in card[0]["url"]


def test_the_erp_receives_the_seeded_events_in_order_with_valid_signatures(sandbox):
    events = wait_for(lambda: len(sandbox.erp()) >= 5 and sandbox.erp(), "seed events at the ERP")

    by_bill: dict[str, list[int]] = {}
    for event in events:
        assert event["signature_ok"] is True
        by_bill.setdefault(event["bill"], []).append(event["seq"])
    assert sorted(by_bill.values()) == [[1], [1, 2], [1, 2]]


def test_the_erp_receiver_refuses_a_bad_signature_and_shows_it(sandbox):
    body = json.dumps({"id": "evt_forged", "type": "bill.opened", "bill": {"number": "B0000-0001", "seq": 1}})
    forged = signature_header("not-the-secret-at-all", int(time.time()), body.encode())
    answer = requests.post(f"{sandbox.url}{erp_receiver.PATH}", data=body, timeout=10,
                           headers={"RenoPay-Signature": forged, "Idempotency-Key": "evt_forged"})

    assert answer.status_code == 401
    assert [e["signature_ok"] for e in sandbox.erp() if e["id"] == "evt_forged"] == [False]


def test_a_new_staff_identity_binds_with_a_fresh_invite_code(sandbox):
    new_staff = {"kind": "staff", "role": "finance", "name": "赵出纳"}
    added = sandbox.api("POST", "/identities", json=new_staff).json()

    assert added["answer"]["reply"]["text"].startswith("绑定成功，你的角色：财务")
    with sandbox.db.transaction() as s:
        assert s.query(Staff).filter_by(openid=added["openid"]).one().name == "赵出纳"


def test_a_new_customer_scans_an_invite_and_is_bound(sandbox):
    customer = sandbox.api("POST", "/identities", json={"kind": "customer", "name": "周先生"}).json()
    assert "欢迎关注" in customer["answer"]["reply"]["text"]
    sandbox.say(seed.SALES.openid, "开单 周先生 13700137000 1000 定金")
    sandbox.say(seed.SALES.openid, "取消")
    sandbox.say(seed.SALES.openid, "邀请 13700137000")
    wait_for(lambda: sandbox.app.extensions[views.EXTENSION].wx.qrcodes, "the invite QR")

    scanned = sandbox.api("POST", "/scan", json={"openid": customer["openid"]}).json()

    assert scanned["reply"]["text"].startswith("周先生，已为您绑定客户资料。")
    labels = [c["label"] for c in sandbox.api("GET", "/identities").json()["customers"]]
    assert "周先生（137****7000）" in labels


def test_the_wechat_pay_sheet_refuses_a_forged_pay_sign(sandbox):
    params = {"appId": sandbox.app.extensions["renopay.settings"].wechat_app_id, "timeStamp": "1",
              "nonceStr": "n", "package": "prepay_id=wx123", "signType": "RSA", "paySign": "Zm9yZ2Vk"}
    answer = sandbox.api("POST", "/wxpay/check", json={"openid": seed.ZHANG.openid, "params": params})

    assert answer.status_code == 422
    assert answer.json() == {"err_msg": "get_brand_wcpay_request:fail", "message": "支付验证签名失败"}


def test_only_a_simulated_phone_frame_counts_as_inside_wechat(sandbox):
    phone = requests.Session()
    phone.post(f"{sandbox.url}/sandbox/api/browse", json={"openid": seed.ZHANG.openid}, timeout=10)
    bills = sandbox.api("POST", "/send", json={"openid": seed.ZHANG.openid, "click": "MY_BILLS"}).json()
    url = bills["reply"]["articles"][0]["url"]

    in_frame = phone.get(url, headers={"Sec-Fetch-Dest": "iframe"}, allow_redirects=False, timeout=10)
    top_level = phone.get(url, headers={"Sec-Fetch-Dest": "document"}, allow_redirects=False, timeout=10)
    stranger = requests.get(url, headers={"Sec-Fetch-Dest": "iframe"}, allow_redirects=False, timeout=10)

    assert in_frame.status_code == 302 and "/connect/oauth2/authorize" in in_frame.headers["Location"]
    assert top_level.status_code == 200 and stranger.status_code == 200  # the Native QR page
