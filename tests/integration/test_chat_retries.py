"""Acceptance 2: WeChat's retries of one push create one bill, and every delivery gets the same reply —
also when the retries arrive while the first delivery is still being processed."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import requests

from bot.endpoint import ROUTER_KEY
from payments.models import StaffRole
from sandbox import push_client as pc
from tests.fixtures.chat import Chat


@dataclass
class Gate:
    """Holds the first command until ``release_at`` pushes have reached /wechat (1.5 s at most)."""

    calls: list[str] = field(default_factory=list)
    pushes: int = 0
    release_at: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hold(self) -> None:
        deadline = time.monotonic() + (10 if self.release_at else 1.5)
        while time.monotonic() < deadline and not (self.release_at and self.pushes >= self.release_at):
            time.sleep(0.01)


@pytest.fixture
def slow_first_command(chat: Chat):
    """Make the first command after ``calls.clear()`` slow, as a slow database would."""
    app = chat.live.app
    route, wsgi = app.extensions[ROUTER_KEY], app.wsgi_app
    gate = Gate()

    def slow(session, inbound):
        with gate.lock:
            gate.calls.append(inbound.dedup_key)
            first = len(gate.calls) == 1
        if first:
            gate.hold()
        return route(session, inbound)

    def counting(environ, start_response):
        if environ.get("PATH_INFO") == "/wechat":
            with gate.lock:
                gate.pushes += 1
        return wsgi(environ, start_response)

    app.extensions[ROUTER_KEY], app.wsgi_app = slow, counting
    yield gate
    app.extensions[ROUTER_KEY], app.wsgi_app = route, wsgi


@pytest.mark.parametrize("mode", pc.MODES)
def test_four_concurrent_deliveries_of_one_push_create_one_bill_and_get_one_reply(
    chat: Chat, slow_first_command: Gate, mode: str
) -> None:
    sales = chat.staff(StaffRole.sales)
    slow_first_command.calls.clear()  # the binding was the first call; slow down the next command
    client = chat.live.client(mode)
    message = pc.text_message(chat.live.creds.original_id, sales, "开单 张三 13800138000 38000 首期款")

    def deliver(_: int) -> pc.PushResult:
        query, body = client.build_request(message)
        resp = requests.post(client.target_url, params=query, data=body, timeout=10)
        return client.judge(message, resp.status_code, resp.content)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(deliver, range(4)))

    replies = [r.reply for r in results]
    assert all(r.verdict is pc.Verdict.REPLY for r in results), [r.reason for r in results]
    assert all(reply == replies[0] for reply in replies)
    assert replies[0] is not None and "请核对账单" in replies[0]["Content"]
    assert len(chat.bills()) == 1
    assert slow_first_command.calls == [f"m:{message.msg_id}"]  # the command ran once


def test_push_client_retrying_a_slow_push_three_times_gets_the_first_reply(
    chat: Chat, slow_first_command: Gate
) -> None:
    sales = chat.staff(StaffRole.sales)
    slow_first_command.calls.clear()
    slow_first_command.pushes, slow_first_command.release_at = 0, 4  # busy until the third retry arrives
    client = chat.live.client("safe")
    client.timeout = 1.0  # WeChat's 5 s, scaled down
    message = pc.text_message(chat.live.creds.original_id, sales, "开单 张三 13800138000 38000 首期款")

    result = client.push(message)

    assert result.attempts == 4 and result.verdict is pc.Verdict.REPLY, result.as_dict()
    assert result.reply is not None and "请核对账单" in result.reply["Content"]
    assert len(chat.bills()) == 1
    again = chat.live.client("safe").push(message)  # a late fourth retry, after everything settled
    assert again.reply == result.reply


def test_a_retried_confirmation_opens_the_bill_once(chat: Chat) -> None:
    sales = chat.staff(StaffRole.sales)
    chat.text(sales, "开单 张三 13800138000 38000 首期款")
    confirm = pc.text_message(chat.live.creds.original_id, sales, "确认")

    first, second = chat.live.push(confirm), chat.live.push(confirm)

    assert first.reply == second.reply and "已开单" in first.reply["Content"]
    [bill] = chat.bills()
    assert bill.seq == 1  # one bill.opened event
