"""Soak actors that move money: payers (Native QR and JSAPI, in part or in full, with duplicate
notifications now and then), a forger (notifications that must be refused with 401) and refunders
(ERP API and staff chat)."""

from __future__ import annotations

import base64
import json
import random
import secrets
import time
from typing import Any

import requests
from sqlalchemy import text
from sqlalchemy.engine import Engine

from benchmarks.soak_traffic import WECHAT_UA, World, api_headers, call, get_bill, one_of, pusher, say

PAYABLE = ("open", "partially_paid")
IN_FLIGHT = ("pending", "processing")


def yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def choose_amount(outstanding: int) -> int:
    if outstanding < 20_000 or random.random() < 0.5:
        return outstanding
    return max(100, outstanding * random.randint(20, 60) // 100)


# ------------------------------------------------------------------------------------------ paying


def open_native(world: World, http: requests.Session, engine: Engine, bill: dict[str, Any], amount: int
                ) -> str | None:
    resp = call(world, http, "GET", f"{bill['pay_url']}/qr.png", "GET /pay/<token>/qr.png",
                params={"amount_fen": amount})
    if resp is None or resp.status_code != 200:
        return None
    # The customer's phone reads the code_url from the QR; we read the attempt it belongs to.
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT a.out_trade_no FROM payment_attempts a JOIN bills b ON b.id = a.bill_id "
            "WHERE b.number = :n AND a.status = 'pending' AND a.channel = 'native' AND a.amount_fen = :a "
            "ORDER BY a.id DESC LIMIT 1"), {"n": bill["number"], "a": amount}).scalar_one_or_none()


def open_jsapi(world: World, bill: dict[str, Any], openid: str, amount: int) -> str | None:
    """The pay page inside WeChat: OAuth through the stand-in, then the JSAPI order."""
    phone = requests.Session()
    phone.headers["User-Agent"] = WECHAT_UA
    login = call(world, phone, "GET", f"{world.wx}/_control/oauth/login", "stand-in oauth login",
                 params={"openid": openid})
    page = call(world, phone, "GET", bill["pay_url"], "GET /pay/<token> (in WeChat, via OAuth)")
    if login is None or page is None or page.status_code != 200:
        return None
    resp = call(world, phone, "POST", f"{bill['pay_url']}/jsapi", "POST /pay/<token>/jsapi",
                json={"amount": yuan(amount)})
    if resp is None or resp.status_code != 200:
        return None
    return str(resp.json()["out_trade_no"])


def wait_paid(world: World, http: requests.Session, pay_url: str, out_trade_no: str) -> bool:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not world.stop.is_set():
        resp = call(world, http, "GET", f"{pay_url}/status", "GET /pay/<token>/status",
                    params={"attempt": out_trade_no})
        if resp is not None and resp.status_code == 200 and (resp.json().get("attempt") or {}).get(
                "status") == "succeeded":
            return True
        time.sleep(0.3)
    return False


def pay_once(world: World, http: requests.Session, engine: Engine, number: str) -> None:
    bill = get_bill(world, http, number)
    if bill is None or bill["status"] not in PAYABLE:
        if bill is not None:
            with world.lock:
                world.settled.add(number)
        return
    who = world.bills[number]
    amount = choose_amount(bill["outstanding_fen"])
    jsapi = random.random() < 0.3
    no = (open_jsapi(world, bill, who.openid, amount) if jsapi
          else open_native(world, http, engine, bill, amount))
    if no is None:
        world.stats.count("payment not opened (fault or race)")
        return
    if random.random() < 0.15:
        fault = random.choice(({"duplicate": 3}, {"concurrent": 3}))
        call(world, http, "POST", f"{world.pay}/_control/faults/notifications", "stand-in faults",
             json={**fault, "count": 1})
        world.stats.count("duplicate notifications switched on")
    resp = call(world, http, "POST", f"{world.pay}/_control/orders/{no}/pay", "stand-in pay",
                json={"openid": who.openid})
    if resp is None or resp.status_code != 200:
        world.stats.count("stand-in refused to pay (closed order)")
        return
    with world.lock:
        world.paid.add(number)
    world.stats.count("paid at stand-in (jsapi)" if jsapi else "paid at stand-in (native)")
    world.stats.count("partial payments" if amount < bill["outstanding_fen"] else "full payments")
    if not wait_paid(world, http, bill["pay_url"], no):
        world.stats.count("payment not seen within 20 s (applied later)")


def payer(world: World, engine: Engine) -> None:
    http = requests.Session()
    while not world.stop.wait(random.uniform(0.3, 1.0)):
        with world.claim(lambda free: one_of([n for n in free if n not in world.settled])) as number:
            if number is not None:
                pay_once(world, http, engine, number)


# ------------------------------------------------------------------------------------------ forging


def forged_request(world: World) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({
        "id": secrets.token_hex(16), "create_time": "2026-01-01T10:00:00+08:00",
        "event_type": "TRANSACTION.SUCCESS",
        "resource_type": "encrypt-resource", "summary": "支付成功",
        "resource": {"algorithm": "AEAD_AES_256_GCM",
                     "ciphertext": base64.b64encode(secrets.token_bytes(96)).decode(),
                     "associated_data": "transaction", "original_type": "transaction",
                     "nonce": secrets.token_hex(6)},
    }).encode()
    now = int(time.time())
    headers = {"Content-Type": "application/json", "Wechatpay-Nonce": secrets.token_hex(16),
               "Wechatpay-Timestamp": str(random.choice((now, now, now - 900))),
               "Wechatpay-Serial": random.choice((world.creds.platform_public_key_id, "PUB_KEY_ID_FORGED")),
               "Wechatpay-Signature": base64.b64encode(secrets.token_bytes(256)).decode(),
               "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048"}
    return body, headers


def forger(world: World) -> None:
    http = requests.Session()
    while not world.stop.wait(random.uniform(1.5, 4.0)):
        body, headers = forged_request(world)
        resp = call(world, http, "POST", f"{world.web}/payments/wechatpay/notify",
                    "POST /payments/wechatpay/notify (forged)", data=body, headers=headers)
        if resp is not None:
            with world.lock:
                world.forged_answers[resp.status_code] += 1


# ------------------------------------------------------------------------------------------ refunds


def refundable(bill: dict[str, Any]) -> int:
    if any(r["status"] in IN_FLIGHT for r in bill["refunds"]):
        return 0  # one refund in flight at a time keeps the amounts predictable
    return int(bill["paid_fen"]) - int(bill["refunded_fen"])


def refund_by_api(world: World, http: requests.Session, number: str, amount: int) -> None:
    body = {"out_refund_no": f"SR-{world.run_id}-{world.next_no()}", "amount_fen": amount,
            "reason": "少做一项吊顶"}
    for _ in range(5):  # idempotent on out_refund_no
        resp = call(world, http, "POST", f"{world.web}/api/v1/bills/{number}/refunds",
                    "POST /api/v1/bills/<number>/refunds", json=body, headers=api_headers())
        if resp is not None and resp.status_code in (200, 201):
            world.stats.count("refunds requested (ERP API)")
            return
        if resp is not None and resp.status_code < 500:
            world.stats.count(f"refund refused by API ({resp.status_code})")
            return
        if world.stop.wait(1.0):
            return


def refund_by_chat(world: World, number: str, amount: int) -> None:
    client = pusher(world)
    say(world, client, world.finance, f"退款 {number} {yuan(amount)} 少做一项", "POST /wechat (退款)")
    reply = say(world, client, world.finance, "确认", "POST /wechat (确认退款)")
    ok = reply.startswith("已提交退款")
    world.stats.count("refunds requested (chat)" if ok else "refund refused in chat")


def refunder(world: World) -> None:
    http = requests.Session()
    while not world.stop.wait(random.uniform(3.0, 7.0)):
        with world.claim(lambda free: one_of([n for n in free if n in world.paid])) as number:
            bill = get_bill(world, http, number) if number else None
            room = refundable(bill) if bill else 0
            if number is None or room < 200:
                continue
            amount = min(room // 2, random.randint(1, 50) * 100)
            if random.random() < 0.6:
                refund_by_api(world, http, number, amount)
            else:
                refund_by_chat(world, number, amount)
