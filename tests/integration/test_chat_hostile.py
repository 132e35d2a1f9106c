"""Acceptance 4: hostile pushes to /wechat over HTTP — forged, malformed, oversized, undecryptable,
odd encodings, injection-looking text, abusive commands. Never a 5xx, never a stack trace in the
answer, never a changed bill."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import requests
from sqlalchemy import func, select

from payments.models import Bill, Customer, Payment, StaffRole
from sandbox import push_client as pc
from tests.fixtures.chat import Chat, new_openid

GH = "gh_placeholder"  # replaced by the account's original id per test


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes | str
    query: str = "signed"  # signed | unsigned | bad | aes-bad-msgsig | aes | aes-garbage | aes-other-app …
    expect: tuple[int, ...] = (400,)
    method: str = "POST"


def xml(**fields: object) -> str:
    base = {"ToUserName": GH, "FromUserName": "o_hostile_user", "CreateTime": 1764000000, "MsgType": "text"}
    base.update(fields)
    return pc.render_xml({k: v for k, v in base.items() if v is not None})


def text(content: str, **more: object) -> str:
    return xml(Content=content, MsgId=None, **more)


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
    "<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName><CreateTime>1</CreateTime>"
    "<MsgType>text</MsgType><Content>&lol2;</Content></xml>"
)
XXE = (
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    "<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName><CreateTime>1</CreateTime>"
    "<MsgType>text</MsgType><Content>&xxe;</Content></xml>"
)
OK = (200,)
CASES = [
    Case("no query at all", text("帮助"), "unsigned", (403,)),
    Case("wrong signature", text("帮助"), "bad", (403,)),
    Case("signature of another token", text("帮助"), "other-token", (403,)),
    Case("signature without timestamp", text("帮助"), "no-timestamp", (403,)),
    Case("signature without nonce", text("帮助"), "no-nonce", (403,)),
    Case("GET with a wrong signature", "", "bad", (403,), "GET"),
    Case("PUT is not a push", text("帮助"), "signed", (405,), "PUT"),
    Case("empty body", ""),
    Case("plain words", "hello there"),
    Case("JSON instead of XML", '{"MsgType": "text", "Content": "帮助"}'),
    Case("truncated XML", text("帮助")[:40]),
    Case("foreign root element", "<foo><a>1</a></foo>"),
    Case("empty xml root", "<xml></xml>"),
    Case("text-only xml root", "<xml>帮助</xml>"),
    Case("missing MsgType", xml(MsgType=None, Content="帮助")),
    Case("missing FromUserName", xml(FromUserName=None, Content="帮助")),
    Case("missing ToUserName", xml(ToUserName=None, Content="帮助")),
    Case("missing CreateTime", xml(CreateTime=None, Content="帮助")),
    Case("CreateTime not a number", xml(CreateTime="yesterday", Content="帮助")),
    Case("MsgId not a number", xml(MsgId="1 OR 1=1", Content="帮助")),
    Case("MsgId absurdly long", xml(MsgId="9" * 64, Content="帮助")),
    Case("openid absurdly long", xml(FromUserName="o" * 300, Content="帮助")),
    Case("addressed to another account", xml(ToUserName="gh_someone_else", Content="帮助")),
    Case("entity expansion (billion laughs)", BILLION_LAUGHS),
    Case("external entity (XXE)", XXE),
    Case("bare DOCTYPE", '<!DOCTYPE xml><xml><a>1</a></xml>'),
    Case("invalid UTF-8", b"<xml><Content>\xff\xfe\xfd</Content></xml>"),
    Case("UTF-16 body", text("帮助").encode("utf-16")),
    Case("NUL character reference", text("帮助").replace("帮助", "]]>&#0;<![CDATA[")),
    Case("control character reference", text("x").replace("<![CDATA[x]]>", "&#1;")),
    Case("duplicated Content", text("帮助").replace("</xml>", "<Content>again</Content></xml>")),
    Case("element inside Content", text("x").replace("<![CDATA[x]]>", "<b>bold</b>")),
    Case("deep nesting", "<xml>" + "<a>" * 500 + "</a>" * 500 + "</xml>"),
    Case("body over the /wechat cap", text("帮" * 30_000), expect=(413,)),
    Case("body over the app cap", text("a" * 300_000), expect=(413,)),
    Case("encrypt_type unknown", text("帮助"), "enc-rsa"),
    Case("safe mode without <Encrypt>", text("帮助"), "aes-missing"),
    Case("safe mode, msg_signature wrong", "", "aes-bad-msgsig", (403,)),
    Case("safe mode, msg_signature missing", "", "aes-no-msgsig", (403,)),
    Case("safe mode, ciphertext garbage", "", "aes-garbage"),
    Case("safe mode, ciphertext not base64", "", "aes-not-base64"),
    Case("safe mode, ciphertext for another appid", "", "aes-other-app"),
    Case("safe mode, ciphertext under another key", "", "aes-other-key"),
    Case("safe mode, decrypts to non-XML", "", "aes-not-xml"),
    Case("unknown message type", xml(MsgType="hologram", MsgId=1, Content=None), expect=OK),
    Case("image message", xml(MsgType="image", MsgId=2, PicUrl="http://x/y.jpg", MediaId="m"), expect=OK),
    Case("voice message", xml(MsgType="voice", MsgId=3, MediaId="m", Format="amr"), expect=OK),
    Case("location message", xml(MsgType="location", MsgId=4, Location_X=1, Location_Y=2), expect=OK),
    Case("unknown event", xml(MsgType="event", Event="TELEPORT"), expect=OK),
    Case("event without Event", xml(MsgType="event"), expect=OK),
    Case("SCAN of an unknown scene", xml(MsgType="event", Event="SCAN", EventKey="cust_nope"), expect=OK),
    Case("subscribe with a forged scene", xml(MsgType="event", Event="subscribe", EventKey="qrscene_x"),
         expect=OK),
    Case("CLICK with an unknown key", xml(MsgType="event", Event="CLICK", EventKey="DROP TABLE"), expect=OK),
    Case("emoji", text("😀🎉💸 账单？"), expect=OK),
    Case("CDATA terminator", text("]]><MsgType>news</MsgType>"), expect=OK),
    Case("SQL-looking text", text("'; DROP TABLE bills; --"), expect=OK),
    Case("SQL in a bill number", text("支付 B2611-0001' OR '1'='1"), expect=OK),
    Case("very long text", text("账单" * 5000), expect=OK),
    Case("RTL and zero-width characters", text("\u202e\u200b账单\u200d"), expect=OK),
]

STAFF_ABUSE = [
    "作废 {n}", "收款 {n} abc 现金", "收款 {n} 100 支付宝", "收款 {n} 999999999 现金", "收款 {n} -100 现金",
    "收款 {n} 1e10 现金", "收款 {n} NaN 现金", "开单 张三 999999999999999999 首期款", "开单 张三 0 首期款",
    "开单 ' OR 1=1 -- 100 首期款", "开单 张三 100 首期款 2020-01-01", "开单 张三 100 首期款 13月45日",
    "催款 ' OR 1=1 --", "账单 %s%s%n", "二维码 ../../etc/passwd", "确认", "取消", "未付 ' OR ''='",
]


def _query(chat: Chat, case: Case, body: str) -> tuple[dict[str, str], bytes]:
    client, creds = chat.live.client("safe"), chat.live.creds
    raw = body.encode("utf-8") if isinstance(body, str) else body
    signed = client.signed_query("o_hostile_user")
    make: dict[str, Callable[[], tuple[dict[str, str], bytes]]] = {
        "signed": lambda: (signed, raw),
        "unsigned": lambda: ({}, raw),
        "bad": lambda: ({**signed, "signature": "0" * 40, "echostr": "x"}, raw),
        "other-token": lambda: (pc.PushClient(client.target_url, "another-token", creds.app_id,
                                              creds.encoding_aes_key, creds.original_id)
                                .signed_query(None), raw),
        "no-timestamp": lambda: ({k: v for k, v in signed.items() if k != "timestamp"}, raw),
        "no-nonce": lambda: ({k: v for k, v in signed.items() if k != "nonce"}, raw),
        "enc-rsa": lambda: ({**signed, "encrypt_type": "rsa"}, raw),
        "aes-missing": lambda: ({**signed, "encrypt_type": "aes", "msg_signature": "0" * 40}, raw),
    }
    if case.query in make:
        return make[case.query]()
    inner = text("帮助").replace(GH, creds.original_id)
    ciphers = {
        "aes-bad-msgsig": pc.encrypt(creds.encoding_aes_key, creds.app_id, inner),
        "aes-no-msgsig": pc.encrypt(creds.encoding_aes_key, creds.app_id, inner),
        "aes-garbage": base64.b64encode(b"\x00" * 64).decode(),
        "aes-not-base64": "!!!not base64!!!",
        "aes-other-app": pc.encrypt(creds.encoding_aes_key, "wx_someone_else_app", inner),
        "aes-other-key": pc.encrypt("B" * 43, creds.app_id, inner),
        "aes-not-xml": pc.encrypt(creds.encoding_aes_key, creds.app_id, "not xml at all"),
    }
    enc = ciphers[case.query]
    query = client.signed_query("o_hostile_user", enc)
    if case.query == "aes-bad-msgsig":
        query["msg_signature"] = "f" * 40
    if case.query == "aes-no-msgsig":
        query.pop("msg_signature")
    return query, pc.render_xml({"ToUserName": creds.original_id, "Encrypt": enc}).encode()


def _ledger(chat: Chat) -> list[tuple]:
    with chat.live.db.transaction() as s:
        bills = [(b.number, str(b.status), b.amount_fen, b.paid_fen, b.seq, b.last_reminded_on)
                 for b in s.execute(select(Bill).order_by(Bill.id)).scalars()]
        counts = (s.execute(select(func.count(Payment.id))).scalar_one(),
                  s.execute(select(func.count(Customer.id))).scalar_one())
    return [*bills, counts]


@pytest.fixture
def open_bill(chat: Chat) -> tuple[str, str]:
    finance = chat.staff(StaffRole.finance, "王会计")
    chat.text(finance, "开单 张三 13800138000 38000 首期款")
    chat.text(finance, "确认")
    return finance, chat.bills()[0].number


def test_there_are_at_least_fifty_hostile_cases() -> None:
    assert len(CASES) + len(STAFF_ABUSE) >= 50
    assert len({c.name for c in CASES}) == len(CASES)


def test_hostile_pushes_never_get_a_5xx_or_change_a_bill(chat: Chat, open_bill: tuple[str, str]) -> None:
    before = _ledger(chat)
    failures = []
    for case in CASES:
        body = case.body.replace(GH, chat.live.creds.original_id) if isinstance(case.body, str) else case.body
        query, raw = _query(chat, case, body)
        resp = requests.request(case.method, chat.live.url + "/wechat", params=query, data=raw, timeout=10)
        problems = []
        if resp.status_code not in case.expect:
            problems.append(f"status {resp.status_code}")
        if b"Traceback" in resp.content or b"sqlalchemy" in resp.content.lower():
            problems.append("internals leaked")
        if resp.status_code in (403, 400, 413) and resp.content:
            problems.append(f"non-empty {resp.status_code} body")
        if problems:
            failures.append((case.name, problems))
    assert failures == []
    assert _ledger(chat) == before


def test_hostile_staff_commands_get_polite_replies_and_change_nothing(
    chat: Chat, open_bill: tuple[str, str]
) -> None:
    finance, number = open_bill
    chat.text(finance, "取消")  # nothing pending: a polite refusal
    before = _ledger(chat)
    for command in STAFF_ABUSE:
        reply = chat.text(finance, command.format(n=number))
        assert reply.strip() and "Traceback" not in reply, command
    assert _ledger(chat) == before


def test_user_text_with_cdata_terminators_comes_back_intact(chat: Chat) -> None:
    sales = chat.staff(StaffRole.sales)
    reply = chat.text(sales, "开单 ]]>张三]]> 100 首期款")
    assert "]]>张三]]>" in reply  # echoed inside a well-formed (and, in safe mode, encrypted) reply


def test_a_fresh_stranger_gets_the_unknown_command_answer_for_gibberish(chat: Chat) -> None:
    assert "没有听懂" in chat.text(new_openid(), "asdfgh")
