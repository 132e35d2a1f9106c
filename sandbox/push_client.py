"""A push client that behaves like WeChat's servers toward our ``/wechat`` endpoint.

It builds the signed query string, renders message and event XML, speaks plaintext / compatible / safe
(AES) mode, retries a push that got no answer in time (same ``MsgId``), and judges the answer the way
WeChat does. The crypto is implemented here directly with ``cryptography`` — deliberately *not* with
wechatpy — so that it independently checks the endpoint, which uses wechatpy.

Wire facts: ../shared/reference/wechat-official-account.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import requests
import xmltodict
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MODES = ("plaintext", "compatible", "safe")
SERVICE_UNAVAILABLE = "该公众号暂时无法提供服务"
_BLOCK = 32  # WeChat pads to 32-byte blocks (PKCS#7 with k=32), not AES's 16
REPLY_TYPES = frozenset(
    {"text", "image", "voice", "video", "music", "news", "transfer_customer_service"}
)


# --------------------------------------------------------------------------------------- crypto


class PushCryptoError(Exception):
    """An encrypted reply that does not verify or decrypt."""


def sha1_signature(*parts: str) -> str:
    """``sha1("".join(sorted(parts)))`` as lowercase hex — the URL check and ``msg_signature``."""
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8")).hexdigest()  # noqa: S324 - WeChat's scheme


def aes_key(encoding_aes_key: str) -> bytes:
    key = base64.b64decode(encoding_aes_key + "=")
    if len(key) != 32:
        raise ValueError("EncodingAESKey must be 43 characters decoding to 32 bytes")
    return key


def encrypt(encoding_aes_key: str, app_id: str, message: str | bytes, random16: bytes | None = None) -> str:
    """WeChat's message encryption: AES-256-CBC(random16 ‖ len ‖ msg ‖ appid), padded to 32, base64."""
    key = aes_key(encoding_aes_key)
    msg = message.encode("utf-8") if isinstance(message, str) else message
    rnd = random16 if random16 is not None else os.urandom(16)
    if len(rnd) != 16:
        raise ValueError("random prefix must be 16 bytes")
    plain = rnd + struct.pack(">I", len(msg)) + msg + app_id.encode("utf-8")
    pad = _BLOCK - len(plain) % _BLOCK
    plain += bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode("ascii")


def decrypt(encoding_aes_key: str, app_id: str, ciphertext_b64: str) -> bytes:
    """Inverse of :func:`encrypt`; checks padding and the trailing appid."""
    key = aes_key(encoding_aes_key)
    try:
        raw = base64.b64decode(ciphertext_b64, validate=True)
    except (ValueError, TypeError) as exc:
        raise PushCryptoError("ciphertext is not base64") from exc
    if not raw or len(raw) % 16:
        raise PushCryptoError("ciphertext length is not a multiple of the AES block")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = decryptor.update(raw) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= _BLOCK or plain[-pad:] != bytes([pad]) * pad:
        raise PushCryptoError("bad padding")
    plain = plain[:-pad]
    if len(plain) < 20:
        raise PushCryptoError("plaintext too short")
    (length,) = struct.unpack(">I", plain[16:20])
    msg, tail = plain[20 : 20 + length], plain[20 + length :]
    if len(msg) != length:
        raise PushCryptoError("declared length exceeds the plaintext")
    if tail != app_id.encode("utf-8"):
        raise PushCryptoError("appid mismatch")
    return msg


# ------------------------------------------------------------------------------------- messages


def _cdata(value: str) -> str:
    # ``]]>`` cannot appear inside CDATA: split it across two sections.
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def render_xml(fields: Mapping[str, Any]) -> str:
    """Render a flat mapping as WeChat message XML (strings in CDATA, ints bare)."""
    out = ["<xml>"]
    for name, value in fields.items():
        if value is None:
            continue
        text = str(value) if isinstance(value, int | float) else _cdata(str(value))
        out.append(f"<{name}>{text}</{name}>")
    out.append("</xml>")
    return "".join(out)


def _new_msg_id() -> int:
    return secrets.randbits(63) | (1 << 62)  # 19 digits, like real MsgIds


@dataclass(frozen=True)
class InboundMessage:
    """One message or event as WeChat would push it (``fields`` in document order)."""

    openid: str
    fields: dict[str, Any]

    @property
    def msg_type(self) -> str:
        return str(self.fields["MsgType"])

    @property
    def event(self) -> str | None:
        ev = self.fields.get("Event")
        return str(ev) if ev is not None else None

    @property
    def msg_id(self) -> int | None:
        mid = self.fields.get("MsgId")
        return int(mid) if mid is not None else None

    @property
    def create_time(self) -> int:
        return int(self.fields["CreateTime"])

    def xml(self) -> str:
        return render_xml(self.fields)


def _base(to: str, openid: str, msg_type: str, create_time: int | None) -> dict[str, Any]:
    return {
        "ToUserName": to,
        "FromUserName": openid,
        "CreateTime": int(time.time()) if create_time is None else create_time,
        "MsgType": msg_type,
    }


def _message(to: str, openid: str, msg_type: str, extra: dict[str, Any], *, msg_id: int | None,
             create_time: int | None) -> InboundMessage:
    fields = _base(to, openid, msg_type, create_time)
    fields.update(extra)
    fields["MsgId"] = _new_msg_id() if msg_id is None else msg_id
    return InboundMessage(openid, fields)


def _event(to: str, openid: str, event: str, extra: dict[str, Any] | None = None, *,
           create_time: int | None = None) -> InboundMessage:
    fields = _base(to, openid, "event", create_time)
    fields["Event"] = event
    fields.update(extra or {})
    return InboundMessage(openid, fields)


def text_message(to: str, openid: str, content: str, *, msg_id: int | None = None,
                 create_time: int | None = None) -> InboundMessage:
    return _message(to, openid, "text", {"Content": content}, msg_id=msg_id, create_time=create_time)


def image_message(to: str, openid: str, pic_url: str, media_id: str, *, msg_id: int | None = None,
                  create_time: int | None = None) -> InboundMessage:
    return _message(to, openid, "image", {"PicUrl": pic_url, "MediaId": media_id},
                    msg_id=msg_id, create_time=create_time)


def voice_message(to: str, openid: str, media_id: str, *, fmt: str = "amr", recognition: str | None = None,
                  msg_id: int | None = None, create_time: int | None = None) -> InboundMessage:
    extra: dict[str, Any] = {"MediaId": media_id, "Format": fmt}
    if recognition is not None:
        extra["Recognition"] = recognition
    return _message(to, openid, "voice", extra, msg_id=msg_id, create_time=create_time)


def location_message(to: str, openid: str, x: float, y: float, *, scale: int = 15, label: str = "",
                     msg_id: int | None = None, create_time: int | None = None) -> InboundMessage:
    extra = {"Location_X": x, "Location_Y": y, "Scale": scale, "Label": label}
    return _message(to, openid, "location", extra, msg_id=msg_id, create_time=create_time)


def link_message(to: str, openid: str, title: str, description: str, url: str, *,
                 msg_id: int | None = None, create_time: int | None = None) -> InboundMessage:
    extra = {"Title": title, "Description": description, "Url": url}
    return _message(to, openid, "link", extra, msg_id=msg_id, create_time=create_time)


def subscribe_event(to: str, openid: str, *, scene: str | None = None, ticket: str | None = None,
                    create_time: int | None = None) -> InboundMessage:
    """Plain follow, or follow from a parametric QR (``EventKey = qrscene_<scene>`` + ``Ticket``)."""
    extra: dict[str, Any] = {}
    if scene is not None:
        extra = {"EventKey": f"qrscene_{scene}", "Ticket": ticket or ""}
    else:
        extra = {"EventKey": ""}
    return _event(to, openid, "subscribe", extra, create_time=create_time)


def unsubscribe_event(to: str, openid: str, *, create_time: int | None = None) -> InboundMessage:
    return _event(to, openid, "unsubscribe", {"EventKey": ""}, create_time=create_time)


def scan_event(to: str, openid: str, scene: str, ticket: str, *,
               create_time: int | None = None) -> InboundMessage:
    return _event(to, openid, "SCAN", {"EventKey": scene, "Ticket": ticket}, create_time=create_time)


def click_event(to: str, openid: str, key: str, *, create_time: int | None = None) -> InboundMessage:
    return _event(to, openid, "CLICK", {"EventKey": key}, create_time=create_time)


def view_event(to: str, openid: str, url: str, *, create_time: int | None = None) -> InboundMessage:
    return _event(to, openid, "VIEW", {"EventKey": url}, create_time=create_time)


def template_finish_event(to: str, openid: str, msg_id: int, status: str = "success", *,
                          create_time: int | None = None) -> InboundMessage:
    """``TEMPLATESENDJOBFINISH``; status ``success`` / ``failed:user block`` / ``failed: system failed``."""
    return _event(to, openid, "TEMPLATESENDJOBFINISH", {"MsgID": msg_id, "Status": status},
                  create_time=create_time)


# ------------------------------------------------------------------------------------- results


class Verdict(StrEnum):
    REPLY = "reply"  # a valid passive reply message
    NO_REPLY = "no_reply"  # exactly ``success`` or an empty body
    FAILED = "failed"  # the user sees 该公众号暂时无法提供服务


@dataclass(frozen=True)
class PushResult:
    status_code: int | None
    body: bytes
    reply: dict[str, Any] | None
    verdict: Verdict
    attempts: int
    reason: str = ""
    message: InboundMessage | None = None
    reply_xml: str | None = None  # decrypted reply, when there was one

    @property
    def ok(self) -> bool:
        return self.verdict is not Verdict.FAILED

    @property
    def user_sees(self) -> str | None:
        """What the WeChat user sees besides a reply: the failure notice, or nothing."""
        return SERVICE_UNAVAILABLE if self.verdict is Verdict.FAILED else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status_code": self.status_code,
            "body": self.body.decode("utf-8", "replace"),
            "reply": self.reply,
            "verdict": self.verdict.value,
            "ok": self.ok,
            "user_sees": self.user_sees,
            "attempts": self.attempts,
            "reason": self.reason,
            "msg_id": self.message.msg_id if self.message else None,
        }


@dataclass(frozen=True)
class UrlCheckResult:
    status_code: int | None
    body: bytes
    echostr: str
    ok: bool


# -------------------------------------------------------------------------------------- client


@dataclass
class PushClient:
    """Pushes messages to ``target_url`` like WeChat does.

    ``observer`` (optional) is told about every message before it is sent; the Official Account
    stand-in uses it to learn followers and the 48-hour customer-service window.
    """

    target_url: str
    token: str
    app_id: str
    encoding_aes_key: str
    original_id: str
    mode: str = "safe"
    timeout: float = 5.0
    max_retries: int = 3
    observer: Callable[[InboundMessage], None] | None = None
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")

    # -- building requests

    def signed_query(self, openid: str | None, encrypt_field: str | None = None, *,
                     timestamp: str | None = None, nonce: str | None = None) -> dict[str, str]:
        ts = timestamp or str(int(time.time()))
        nc = nonce or str(secrets.randbelow(9_000_000_000) + 1_000_000_000)
        query = {"signature": sha1_signature(self.token, ts, nc), "timestamp": ts, "nonce": nc}
        if openid is not None:
            query["openid"] = openid
        if encrypt_field is not None:
            query["encrypt_type"] = "aes"
            query["msg_signature"] = sha1_signature(self.token, ts, nc, encrypt_field)
        return query

    def build_request(self, message: InboundMessage) -> tuple[dict[str, str], bytes]:
        """The query and body for one delivery attempt of ``message`` in this client's mode."""
        plain = message.xml()
        if self.mode == "plaintext":
            return self.signed_query(message.openid), plain.encode("utf-8")
        enc = encrypt(self.encoding_aes_key, self.app_id, plain)
        if self.mode == "safe":
            body = render_xml({"ToUserName": message.fields["ToUserName"], "Encrypt": enc})
        else:  # compatible: plain fields and <Encrypt> in one body
            fields = dict(message.fields)
            fields["Encrypt"] = enc
            body = render_xml(fields)
        return self.signed_query(message.openid, enc), body.encode("utf-8")

    # -- sending

    def verify_url(self, echostr: str | None = None) -> UrlCheckResult:
        """``GET`` URL verification: the endpoint must answer ``echostr`` unchanged."""
        echo = echostr or str(secrets.randbelow(10**19))
        query = self.signed_query(None)
        query["echostr"] = echo
        try:
            resp = self.session.get(self.target_url, params=query, timeout=self.timeout)
        except requests.RequestException:
            return UrlCheckResult(None, b"", echo, False)
        return UrlCheckResult(resp.status_code, resp.content, echo,
                              resp.status_code == 200 and resp.content == echo.encode("utf-8"))

    def push(self, message: InboundMessage) -> PushResult:
        """Deliver ``message``; retry (same MsgId) when no answer arrives within ``timeout``."""
        if self.observer is not None:
            self.observer(message)
        attempts = 0
        while True:
            attempts += 1
            query, body = self.build_request(message)
            try:
                resp = self.session.post(
                    self.target_url, params=query, data=body, timeout=self.timeout,
                    headers={"Content-Type": "text/xml; charset=utf-8", "User-Agent": "Mozilla/4.0"},
                )
            except (requests.Timeout, requests.ConnectionError) as exc:
                if attempts <= self.max_retries:
                    continue
                kind = "timeout" if isinstance(exc, requests.Timeout) else "connection error"
                return PushResult(None, b"", None, Verdict.FAILED, attempts,
                                  f"{kind} after {attempts} attempts", message)
            return self.judge(message, resp.status_code, resp.content, attempts)

    def judge(self, message: InboundMessage, status: int, body: bytes, attempts: int = 1) -> PushResult:
        """Judge an answer as WeChat does."""

        def failed(reason: str) -> PushResult:
            return PushResult(status, body, None, Verdict.FAILED, attempts, reason, message)

        if status != 200:
            return failed(f"HTTP {status}")
        text = body.strip()
        if text in (b"", b"success"):
            return PushResult(status, body, None, Verdict.NO_REPLY, attempts, "", message)
        try:
            doc = _parse_xml(body)
        except ValueError as exc:
            return failed(str(exc))
        xml_text = body.decode("utf-8", "replace")
        if "Encrypt" in doc:
            if self.mode == "plaintext":
                return failed("encrypted reply in plaintext mode")
            try:
                xml_text = self._open_envelope(doc)
                doc = _parse_xml(xml_text.encode("utf-8"))
            except (PushCryptoError, ValueError) as exc:
                return failed(f"encrypted reply rejected: {exc}")
        elif self.mode == "safe":
            return failed("plaintext reply in safe mode")
        problem = _check_reply(doc, message)
        if problem:
            return failed(problem)
        return PushResult(status, body, doc, Verdict.REPLY, attempts, "", message, xml_text)

    def _open_envelope(self, doc: dict[str, Any]) -> str:
        enc, sig = doc.get("Encrypt"), doc.get("MsgSignature")
        ts, nonce = doc.get("TimeStamp"), doc.get("Nonce")
        if not all(isinstance(v, str) and v for v in (enc, sig, ts, nonce)):
            raise PushCryptoError("envelope lacks Encrypt/MsgSignature/TimeStamp/Nonce")
        assert isinstance(enc, str) and isinstance(sig, str)
        assert isinstance(ts, str) and isinstance(nonce, str)
        if not hmac.compare_digest(sha1_signature(self.token, ts, nonce, enc), sig):
            raise PushCryptoError("MsgSignature does not verify")
        return decrypt(self.encoding_aes_key, self.app_id, enc).decode("utf-8")


def _parse_xml(body: bytes) -> dict[str, Any]:
    try:
        parsed = xmltodict.parse(body)  # refuses entity declarations by default
    except Exception as exc:  # ExpatError, ValueError on entities, ...
        raise ValueError(f"not XML: {exc}") from exc
    root = parsed.get("xml") if isinstance(parsed, dict) else None
    if not isinstance(root, dict):
        raise ValueError("root element is not <xml> with children")
    return dict(root)


def _check_reply(doc: dict[str, Any], message: InboundMessage) -> str:
    msg_type = doc.get("MsgType")
    if msg_type not in REPLY_TYPES:
        return f"unknown reply MsgType {msg_type!r}"
    if doc.get("ToUserName") != message.openid:
        return "reply ToUserName is not the sender"
    if doc.get("FromUserName") != message.fields["ToUserName"]:
        return "reply FromUserName is not the account"
    if not str(doc.get("CreateTime") or "").isdigit():
        return "reply CreateTime missing"
    if msg_type == "text" and not (doc.get("Content") or "").strip():
        return "empty text reply"
    if msg_type in ("image", "voice"):
        inner = doc.get(msg_type.capitalize())
        if not isinstance(inner, dict) or not inner.get("MediaId"):
            return f"{msg_type} reply without MediaId"
    if msg_type == "news":
        count = str(doc.get("ArticleCount") or "")
        if not count.isdigit() or not 1 <= int(count) <= 8:
            return "news reply needs 1–8 articles"
    return ""
