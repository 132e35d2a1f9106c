"""WeChat push wire format: signatures (constant time), AES envelopes, inbound XML, reply XML.

Receiving uses wechatpy's ``PrpCrypto`` for the AES part (it checks the appid at the end of the
plaintext); signatures are computed here so they can be compared with ``hmac.compare_digest``
(wechatpy compares with ``!=``). No Flask, no database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from xml.parsers import expat

from wechatpy.crypto import PrpCrypto

MAX_TEXT = 2000  # longer text cannot be a command; it is cut before it reaches the router


class BadSignature(Exception):
    """signature or msg_signature does not verify: the push did not come from WeChat (→ 403)."""


class BadPush(Exception):
    """Malformed body, missing fields, undecryptable ciphertext, foreign appid (→ 400)."""


def sha1_signature(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8")).hexdigest()  # noqa: S324 - WeChat's scheme


def verify_signature(token: str, signature: str | None, *parts: str | None) -> None:
    if not token or not signature or any(p is None for p in parts):
        raise BadSignature()
    expected = sha1_signature(token, *[p for p in parts if p is not None])
    if not hmac.compare_digest(expected.encode(), signature.lower().encode("utf-8", "replace")):
        raise BadSignature()


@dataclass(frozen=True)
class Envelope:
    """AES settings of the account; ``crypt`` is None in plaintext-only deployments."""

    token: str
    app_id: str
    encoding_aes_key: str

    def _prp(self) -> PrpCrypto:
        try:
            key = base64.b64decode(self.encoding_aes_key + "=")
        except (binascii.Error, ValueError) as exc:
            raise BadPush("encoding aes key unusable") from exc
        if len(key) != 32:
            raise BadPush("encoding aes key unusable")
        return PrpCrypto(key)

    def open(self, encrypt: str, msg_signature: str | None, timestamp: str, nonce: str) -> bytes:
        verify_signature(self.token, msg_signature, timestamp, nonce, encrypt)
        try:
            text = self._prp().decrypt(encrypt, self.app_id)
        except Exception as exc:  # wechatpy surfaces bad keys/padding as struct/Unicode/Value errors
            raise BadPush("ciphertext does not decrypt for this account") from exc
        return str(text).encode("utf-8")

    def seal(self, reply_xml: str, nonce: str) -> str:
        timestamp = str(int(time.time()))
        encrypt = self._prp().encrypt(reply_xml, self.app_id).decode("ascii")
        signature = sha1_signature(self.token, timestamp, nonce, encrypt)
        return (
            f"<xml><Encrypt>{cdata(encrypt)}</Encrypt><MsgSignature>{cdata(signature)}</MsgSignature>"
            f"<TimeStamp>{timestamp}</TimeStamp><Nonce>{cdata(nonce)}</Nonce></xml>"
        )


# ------------------------------------------------------------------------------------ inbound


@dataclass(frozen=True)
class Inbound:
    """One message or event, as the router sees it."""

    to_user: str
    openid: str
    create_time: int
    msg_type: str  # lower-case: text, image, event, …
    msg_id: str | None = None
    content: str = ""
    event: str | None = None  # lower-case: subscribe, scan, click, …
    event_key: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def dedup_key(self) -> str:
        if self.msg_id:
            return f"m:{self.msg_id}"
        # FromUserName + CreateTime + Event, plus EventKey: two menu clicks in one second are two pushes.
        return f"e:{self.openid}:{self.create_time}:{self.event or self.msg_type}:{self.event_key[:64]}"


class _Nested:
    """The value of a child that is not plain text (attributes, child elements, or a repeated name):
    ``to_inbound`` refuses it where a text field is expected and leaves it out of ``fields``."""


_NESTED = _Nested()


class _PushReader:
    """expat callbacks that keep the children of the root ``<xml>``: ``{name: stripped text or None}``.
    One level of dicts is all a push has; building xmltodict's general tree was most of the parse."""

    __slots__ = ("attrs", "child", "depth", "fields", "root", "text")

    def __init__(self) -> None:
        self.depth = 0
        self.root = self.child = ""
        self.attrs = False
        self.fields: dict[str, Any] = {}
        self.text: list[str] = []

    def start(self, name: str, attrs: list[str]) -> None:
        self.depth += 1
        if self.depth == 1:
            self.root, self.attrs = name, bool(attrs)
        elif self.depth == 2:
            self.child, self.text = name, []
            # A repeated name or attributes make the child structured from the start.
            self.fields[name] = _NESTED if name in self.fields or attrs else None
        else:
            self.fields[self.child] = _NESTED

    def end(self, name: str) -> None:
        if self.depth == 2 and self.fields[name] is None:
            self.fields[name] = "".join(self.text).strip() or None
        self.depth -= 1

    def characters(self, data: str) -> None:
        if self.depth == 2:
            self.text.append(data)


def _refuse_entities(*_: Any) -> None:
    raise ValueError("entity declarations are refused")


def parse_xml(body: bytes) -> dict[str, Any]:
    """Parse a push body into its fields: the text of each child of the root ``<xml>`` (stripped; None
    when empty). Entity declarations are refused (billion laughs, XXE); undefined entities, invalid
    UTF-8 and anything not well-formed are a BadPush."""
    reader = _PushReader()
    parser = expat.ParserCreate("utf-8")
    parser.ordered_attributes = True
    parser.buffer_text = True
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.CharacterDataHandler = reader.characters
    parser.EntityDeclHandler = _refuse_entities
    try:
        parser.Parse(body.decode("utf-8"), True)
    except Exception as exc:  # ExpatError, UnicodeDecodeError, ValueError on entities
        raise BadPush("body is not well-formed UTF-8 XML") from exc
    if reader.root != "xml" or not (reader.fields or reader.attrs):
        raise BadPush("root element is not <xml> with children")
    return reader.fields


def _text(doc: dict[str, Any], name: str) -> str:
    value = doc.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadPush(f"{name} is not a text field")
    return value


def to_inbound(doc: dict[str, Any]) -> Inbound:
    to_user, openid = _text(doc, "ToUserName"), _text(doc, "FromUserName")
    create_time, msg_type = _text(doc, "CreateTime"), _text(doc, "MsgType").lower()
    if not (to_user and openid and msg_type) or not create_time.isdigit() or len(create_time) > 12:
        raise BadPush("ToUserName, FromUserName, CreateTime and MsgType are required")
    if len(openid) > 64 or len(to_user) > 64:
        raise BadPush("identifier too long")
    msg_id = _text(doc, "MsgId") or None
    if msg_id is not None and (not msg_id.isdigit() or len(msg_id) > 32):
        raise BadPush("MsgId is not a number")
    fields = {k: v for k, v in doc.items() if isinstance(v, str)}
    return Inbound(
        to_user=to_user, openid=openid, create_time=int(create_time), msg_type=msg_type, msg_id=msg_id,
        content=_text(doc, "Content")[:MAX_TEXT], event=_text(doc, "Event").lower() or None,
        event_key=_text(doc, "EventKey")[:256], fields=fields,
    )


# ------------------------------------------------------------------------------------ replies


def cdata(value: str) -> str:
    """CDATA that survives any text: ``]]>`` is split across two sections."""
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def new_nonce() -> str:
    return str(secrets.randbelow(9_000_000_000) + 1_000_000_000)
