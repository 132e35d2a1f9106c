"""The soak's mixed traffic: actors in threads, each a loop until ``stop`` is set, timing every call.

Bills come from the ERP API and from staff chat (开单 → 确认); customers read 我的账单; payers pay
bills in part or in full by Native QR (``/pay/<token>/qr.png``, then the stand-in's "pay") or by JSAPI
(the pay page inside "WeChat": OAuth at the stand-in, ``/pay/<token>/jsapi``); duplicate
notifications are switched on at the stand-in now and then; forged notifications must get 401;
refunds go through the ERP API and staff chat (退款 → 确认). A bill is touched by one payer or
refunder at a time, so amounts stay predictable (no accidental overpayment).
"""

from __future__ import annotations

import random
import re
import secrets
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests

from benchmarks.soak_stack import ERP_API_KEY
from sandbox import push_client as pc

WECHAT_UA = "Mozilla/5.0 (iPhone) AppleWebKit/605.1.15 Mobile/15E148 MicroMessenger/8.0.50 NetType/WIFI"
STAGES = ("定金", "首期款", "中期款", "尾款", "增项")
BILL_NUMBER = re.compile(r"B\d{4}-\d{4}")


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.status: dict[str, Counter[str]] = defaultdict(Counter)
        self.events: Counter[str] = Counter()

    def record(self, route: str, status: str, ms: float) -> None:
        with self.lock:
            self.latency[route].append(ms)
            self.status[route][status] += 1

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.events[name] += n


@dataclass
class Person:
    name: str
    phone: str
    openid: str


@dataclass
class World:
    web: str
    pay: str
    wx: str
    creds: Any
    customers: list[Person]
    sales: list[str]
    finance: str
    stats: Stats = field(default_factory=Stats)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    bills: dict[str, Person] = field(default_factory=dict)  # number → customer
    busy: set[str] = field(default_factory=set)
    paid: set[str] = field(default_factory=set)  # bills with money on them (refund candidates)
    settled: set[str] = field(default_factory=set)  # bills no longer payable
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    seq: Iterator[int] = field(default_factory=lambda: iter(range(1, 10**9)))
    forged_answers: Counter[int] = field(default_factory=Counter)

    def next_no(self) -> int:
        with self.lock:
            return next(self.seq)

    @contextmanager
    def claim(self, choose: Callable[[list[str]], list[str]]) -> Iterator[str | None]:
        """Hold one bill (not held by another actor) for the duration."""
        with self.lock:
            free = [n for n in self.bills if n not in self.busy]
            picked = next(iter(choose(free)), None)
            if picked is not None:
                self.busy.add(picked)
        try:
            yield picked
        finally:
            if picked is not None:
                with self.lock:
                    self.busy.discard(picked)


def one_of(items: list[str]) -> list[str]:
    return [random.choice(items)] if items else []


def call(world: World, http: requests.Session, method: str, url: str, route: str, **kwargs: Any
         ) -> requests.Response | None:
    kwargs.setdefault("timeout", 15)
    started = time.perf_counter()
    try:
        response = http.request(method, url, **kwargs)
    except requests.RequestException as exc:
        world.stats.record(route, type(exc).__name__, (time.perf_counter() - started) * 1000)
        return None
    world.stats.record(route, str(response.status_code), (time.perf_counter() - started) * 1000)
    return response


def api_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ERP_API_KEY}"}


# ------------------------------------------------------------------------------------------ chat


def pusher(world: World) -> pc.PushClient:
    c = world.creds
    return pc.PushClient(f"{world.web}/wechat", c.token, c.app_id, c.encoding_aes_key, c.original_id,
                         mode="safe", timeout=5.0)


def say(world: World, client: pc.PushClient, openid: str, content: str, route: str) -> str:
    """Push a text as WeChat would; the reply text ("" when none or failed)."""
    started = time.perf_counter()
    result = client.push(pc.text_message(world.creds.original_id, openid, content))
    world.stats.record(route, str(result.verdict), (time.perf_counter() - started) * 1000)
    reply = result.reply or {}
    return str(reply.get("Content") or reply.get("Articles") or "")


def chat_customers(world: World) -> None:
    client = pusher(world)
    while not world.stop.wait(random.uniform(0.4, 1.2)):
        who = random.choice(world.customers)
        text = random.choice(("我的账单", "我的账单", "账单", "帮助"))
        say(world, client, who.openid, text, f"POST /wechat ({text})")


def chat_staff_bills(world: World) -> None:
    """Sales staff issue bills in chat: 开单 → 确认; finance asks for 今日 / 未付 now and then."""
    client = pusher(world)
    while not world.stop.wait(random.uniform(3.0, 6.0)):
        if random.random() < 0.25:
            say(world, client, world.finance, random.choice(("今日", "未付")), "POST /wechat (staff query)")
            continue
        staff, who = random.choice(world.sales), random.choice(world.customers)
        amount = random.randint(20, 400) * 100
        text = f"开单 {who.phone} {amount} {random.choice(STAGES)} 泥瓦"
        say(world, client, staff, text, "POST /wechat (开单)")
        reply = say(world, client, staff, "确认", "POST /wechat (确认)")
        found = BILL_NUMBER.search(reply) if reply.startswith("已开单") else None
        if found:
            with world.lock:
                world.bills[found.group(0)] = who
            world.stats.count("bills by chat")


# ------------------------------------------------------------------------------------------ bills


def erp_bills(world: World) -> None:
    http = requests.Session()
    while not world.stop.wait(random.uniform(1.5, 3.5)):
        who = random.choice(world.customers)
        body = {"erp_ref": f"SOAK-{world.run_id}-{world.next_no()}",
                "amount_fen": random.randint(50, 3000) * 100,
                "title": "水电改造", "stage": random.choice(STAGES),
                "customer": {"name": who.name, "phone": who.phone}}
        for _ in range(5):  # idempotent on erp_ref: a failed call is simply repeated
            resp = call(world, http, "POST", f"{world.web}/api/v1/bills", "POST /api/v1/bills",
                        json=body, headers=api_headers())
            if resp is not None and resp.status_code in (200, 201):
                with world.lock:
                    world.bills[resp.json()["number"]] = who
                world.stats.count("bills by ERP API")
                break
            if world.stop.wait(1.0):
                return


def get_bill(world: World, http: requests.Session, number: str) -> dict[str, Any] | None:
    resp = call(world, http, "GET", f"{world.web}/api/v1/bills/{number}", "GET /api/v1/bills/<number>",
                headers=api_headers())
    return resp.json() if resp is not None and resp.status_code == 200 else None
