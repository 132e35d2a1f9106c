"""The push client's own crypto against Tencent's published vectors and against wechatpy."""

from __future__ import annotations

import base64

import pytest
from wechatpy.crypto import WeChatCrypto
from wechatpy.utils import check_signature

from sandbox import push_client as pc

VECTOR_TOKEN = "pamtest"
VECTOR_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
VECTOR_APPID = "wxb11529c136998cb6"
VECTOR_CIPHERTEXT = (
    "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg=="
)

APPID = "wx1234567890abcdef"
TOKEN = "sandboxtoken"
AES_KEY = base64.b64encode(bytes(range(32))).decode()[:-1]
GH = "gh_0123456789ab"


def test_url_check_signature_matches_official_example():
    expected = "f464b24fc39322e44b38aa78f5edd27bd1441696"
    assert pc.sha1_signature("AAAAA", "1714036504", "1514711492") == expected


def test_url_check_query_is_built_with_that_signature():
    client = pc.PushClient("http://x/wechat", "AAAAA", APPID, AES_KEY, GH, mode="plaintext")
    query = client.signed_query(None, timestamp="1714036504", nonce="1514711492")
    assert query == {
        "signature": "f464b24fc39322e44b38aa78f5edd27bd1441696",
        "timestamp": "1714036504",
        "nonce": "1514711492",
    }


def test_aes_vector_from_tencent_sample():
    out = pc.encrypt(VECTOR_KEY, VECTOR_APPID, "我是中文abcd123", random16=b"aaaabbbbccccdddd")
    assert out == VECTOR_CIPHERTEXT
    assert pc.decrypt(VECTOR_KEY, VECTOR_APPID, VECTOR_CIPHERTEXT).decode() == "我是中文abcd123"


def test_padding_is_to_32_byte_blocks():
    raw = base64.b64decode(pc.encrypt(AES_KEY, APPID, "x"))
    # 16 + 4 + 1 + 18 = 39 bytes → padded to 64, not to 48
    assert len(raw) == 64


def test_decrypt_rejects_wrong_appid_and_garbage():
    enc = pc.encrypt(AES_KEY, APPID, "<xml/>")
    with pytest.raises(pc.PushCryptoError):
        pc.decrypt(AES_KEY, "wxsomeoneelse00000", enc)
    with pytest.raises(pc.PushCryptoError):
        pc.decrypt(AES_KEY, APPID, "not base64!!")


def test_safe_mode_push_decrypts_with_wechatpy():
    client = pc.PushClient("http://x/wechat", TOKEN, APPID, AES_KEY, GH, mode="safe")
    msg = pc.text_message(GH, "oUser000000000000000000000001", "开单 张三 ]]> 38000")
    query, body = client.build_request(msg)
    assert check_signature(TOKEN, query["signature"], query["timestamp"], query["nonce"]) is None
    assert query["encrypt_type"] == "aes" and query["openid"] == msg.openid
    plain = WeChatCrypto(TOKEN, AES_KEY, APPID).decrypt_message(
        body.decode(), query["msg_signature"], query["timestamp"], query["nonce"]
    )
    assert plain == msg.xml()
    assert "开单 张三 ]]]]><![CDATA[> 38000" in plain


def test_compatible_mode_carries_plain_fields_and_encrypt():
    client = pc.PushClient("http://x/wechat", TOKEN, APPID, AES_KEY, GH, mode="compatible")
    msg = pc.click_event(GH, "oUser000000000000000000000001", "MY_BILLS")
    query, body = client.build_request(msg)
    text = body.decode()
    assert "<Event><![CDATA[CLICK]]></Event>" in text and "<Encrypt>" in text
    plain = WeChatCrypto(TOKEN, AES_KEY, APPID).decrypt_message(
        text, query["msg_signature"], query["timestamp"], query["nonce"]
    )
    assert plain == msg.xml()


def test_wechatpy_encrypted_reply_is_accepted_by_push_client():
    client = pc.PushClient("http://x/wechat", TOKEN, APPID, AES_KEY, GH, mode="safe")
    msg = pc.text_message(GH, "oUser000000000000000000000001", "你好")
    reply = pc.render_xml({"ToUserName": msg.openid, "FromUserName": GH, "CreateTime": 1700000000,
                           "MsgType": "text", "Content": "您好，有什么可以帮您？"})
    envelope = WeChatCrypto(TOKEN, AES_KEY, APPID).encrypt_message(reply, "12345", "1700000000")
    result = client.judge(msg, 200, envelope.encode())
    assert result.verdict is pc.Verdict.REPLY and result.ok
    assert result.reply is not None and result.reply["Content"] == "您好，有什么可以帮您？"


def test_tampered_reply_signature_fails():
    client = pc.PushClient("http://x/wechat", TOKEN, APPID, AES_KEY, GH, mode="safe")
    msg = pc.text_message(GH, "oUser000000000000000000000001", "你好")
    reply = pc.render_xml({"ToUserName": msg.openid, "FromUserName": GH, "CreateTime": 1,
                           "MsgType": "text", "Content": "hi"})
    envelope = WeChatCrypto(TOKEN, AES_KEY, APPID).encrypt_message(reply, "12345", "1700000000")
    tampered = envelope.replace("<Nonce><![CDATA[12345]]>", "<Nonce><![CDATA[12346]]>")
    assert tampered != envelope
    result = client.judge(msg, 200, tampered.encode())
    assert result.verdict is pc.Verdict.FAILED and result.user_sees == pc.SERVICE_UNAVAILABLE


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (200, b"success", pc.Verdict.NO_REPLY),
        (200, b"", pc.Verdict.NO_REPLY),
        (200, b"ok", pc.Verdict.FAILED),
        (200, b'{"ok": true}', pc.Verdict.FAILED),
        (500, b"success", pc.Verdict.FAILED),
        (403, b"", pc.Verdict.FAILED),
    ],
)
def test_judging_plain_answers(status, body, verdict):
    client = pc.PushClient("http://x/wechat", TOKEN, APPID, AES_KEY, GH, mode="plaintext")
    msg = pc.text_message(GH, "oUser000000000000000000000001", "hi")
    assert client.judge(msg, status, body).verdict is verdict


def test_judging_plaintext_xml_replies():
    client = pc.PushClient("http://x/wechat", TOKEN, APPID, AES_KEY, GH, mode="plaintext")
    msg = pc.text_message(GH, "oUser000000000000000000000001", "hi")
    good = pc.render_xml({"ToUserName": msg.openid, "FromUserName": GH, "CreateTime": 1,
                          "MsgType": "text", "Content": "好的"})
    empty = good.replace("好的", "")
    assert client.judge(msg, 200, good.encode()).verdict is pc.Verdict.REPLY
    assert client.judge(msg, 200, empty.encode()).reason == "empty text reply"
    evil = b'<!DOCTYPE x [<!ENTITY a "b">]><xml><MsgType>text</MsgType></xml>'
    assert client.judge(msg, 200, evil).verdict is pc.Verdict.FAILED
