"""Wire pieces of the chat grammar's channel: reply rendering (any text), signatures and dedup keys."""

from __future__ import annotations

import pytest
import xmltodict

from bot.replies import Article, NewsReply, NoReply, TextReply, TransferReply, render
from bot.wire import BadPush, BadSignature, Envelope, parse_xml, to_inbound, verify_signature
from sandbox import push_client as pc

HOSTILE_TEXT = ["]]>", "a]]>b]]>c", "<xml>", "&amp;", "\x00\x01 control", "😀", "'; DROP TABLE bills; --"]


@pytest.mark.parametrize("text", HOSTILE_TEXT)
def test_any_text_renders_as_well_formed_xml_that_reads_back(text: str) -> None:
    xml = render(TextReply(text), to_user="o_user", from_user="gh_acct", create_time=1)
    assert xml is not None
    content = xmltodict.parse(xml)["xml"]["Content"]
    assert content == text.replace("\x00", "").replace("\x01", "").strip()


def test_news_replies_are_capped_at_eight_articles() -> None:
    articles = tuple(Article(f"t{i}", "d", f"https://x/{i}") for i in range(12))
    doc = xmltodict.parse(render(NewsReply(articles), to_user="o", from_user="gh", create_time=1))["xml"]
    assert doc["ArticleCount"] == "8" and len(doc["Articles"]["item"]) == 8


def test_nothing_to_say_renders_as_success_and_transfer_has_no_content() -> None:
    assert render(NoReply(), to_user="o", from_user="gh", create_time=1) is None
    transfer = render(TransferReply(), to_user="o", from_user="gh", create_time=1)
    assert xmltodict.parse(transfer)["xml"]["MsgType"] == "transfer_customer_service"


def test_the_reference_signature_vector_verifies_and_a_tampered_one_does_not() -> None:
    verify_signature("AAAAA", "f464b24fc39322e44b38aa78f5edd27bd1441696", "1714036504", "1514711492")
    with pytest.raises(BadSignature):
        verify_signature("AAAAA", "f464b24fc39322e44b38aa78f5edd27bd1441697", "1714036504", "1514711492")
    with pytest.raises(BadSignature):
        verify_signature("AAAAA", None, "1714036504", "1514711492")


def test_tencents_encryption_vector_opens_with_our_appid_only() -> None:
    token, key, appid = "pamtest", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "wxb11529c136998cb6"
    enc = "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg=="
    sig = pc.sha1_signature(token, "1", "2", enc)
    assert Envelope(token, appid, key).open(enc, sig, "1", "2").decode() == "我是中文abcd123"
    with pytest.raises(BadPush):
        Envelope(token, "wx_other", key).open(enc, sig, "1", "2")


def test_sealed_replies_open_with_the_push_clients_independent_crypto() -> None:
    token, key, appid = "pamtest", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "wxb11529c136998cb6"
    doc = parse_xml(Envelope(token, appid, key).seal("<xml><a>]]]]><![CDATA[></a></xml>", "42").encode())
    assert pc.sha1_signature(token, doc["TimeStamp"], doc["Nonce"], doc["Encrypt"]) == doc["MsgSignature"]
    assert pc.decrypt(key, appid, doc["Encrypt"]) == b"<xml><a>]]]]><![CDATA[></a></xml>"


def test_dedup_keys_use_msgid_for_messages_and_sender_time_event_for_events() -> None:
    text = to_inbound(parse_xml(pc.text_message("gh", "o1", "hi", msg_id=77, create_time=5).xml().encode()))
    click_a = to_inbound(parse_xml(pc.click_event("gh", "o1", "A", create_time=5).xml().encode()))
    click_b = to_inbound(parse_xml(pc.click_event("gh", "o1", "B", create_time=5).xml().encode()))
    assert text.dedup_key == "m:77"
    assert click_a.dedup_key.startswith("e:o1:5:click") and click_a.dedup_key != click_b.dedup_key


def test_a_push_parses_to_the_stripped_text_of_each_child_of_its_root() -> None:
    body = "<xml><A> 1 </A><B><![CDATA[ ]]]]><![CDATA[> ]]>x</B><C/><D>&lt;中&amp;</D><!-- c --></xml>"
    assert parse_xml(body.encode()) == {"A": "1", "B": "]]> x", "C": None, "D": "<中&"}


@pytest.mark.parametrize("body", [
    "<xml><Content a='1'>帮助</Content></xml>",  # attributes
    "<xml><Content><b>帮助</b></Content></xml>",  # a child element
    "<xml><Content>帮助</Content><Other>1</Other><Content>again</Content></xml>",  # repeated
])
def test_a_child_that_is_not_plain_text_is_no_text_field(body: str) -> None:
    doc = parse_xml(body.encode())
    assert not isinstance(doc["Content"], str)
    with pytest.raises(BadPush):
        to_inbound({**doc, "ToUserName": "gh", "FromUserName": "o", "CreateTime": "1", "MsgType": "text"})
    assert doc.get("Other", "1") == "1"  # siblings keep their text


@pytest.mark.parametrize("body", [
    b"", b"<xml></xml>", "<xml>帮助</xml>".encode(), b"<other><A>1</A></other>", b"<xml><A>1</A></xml><xml/>",
    b"<xml><A>\xff</A></xml>", b"<xml><A>&undefined;</A></xml>",
    b'<!DOCTYPE x [<!ENTITY e "v">]><xml><A>&e;</A></xml>',
    b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><A>&e;</A></xml>',
])
def test_what_is_not_a_well_formed_push_with_an_xml_root_and_no_entities_is_a_bad_push(body: bytes) -> None:
    with pytest.raises(BadPush):
        parse_xml(body)
