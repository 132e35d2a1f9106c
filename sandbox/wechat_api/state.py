"""In-memory state of the Official Account stand-in, usable directly from Python tests.

Everything is guarded by one re-entrant lock; the clock can be advanced (``advance_clock``) so token
expiry, OAuth code expiry and the 48-hour window can be tested without sleeping.
"""

from __future__ import annotations

import copy
import secrets
import string
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from sandbox import push_client as pc
from sandbox.keys import SandboxCredentials

TOKEN_TTL = 7200
TOKEN_OVERLAP = 300  # a superseded token keeps working for 5 minutes
OAUTH_CODE_TTL = 300
SERVICE_WINDOW = 48 * 3600
SERVICE_WINDOW_LIMIT = 20
_TOKEN_ALPHABET = string.ascii_letters + string.digits + "_-"
# Events that (re)open the 48-hour customer-service window, besides ordinary messages.
_WINDOW_EVENTS = frozenset({"subscribe", "SCAN", "CLICK", "scancode_push", "scancode_waitmsg"})

ERRMSG = {
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40003: "invalid openid",
    40004: "invalid media type",
    40007: "invalid media_id",
    40008: "invalid message type",
    40009: "invalid image size",
    40013: "invalid appid",
    40016: "invalid button size",
    40017: "invalid button type",
    40029: "invalid code",
    40037: "invalid template_id",
    40053: "invalid action info",
    40097: "invalid args",
    40125: "invalid appsecret",
    40163: "code been used",
    41001: "access_token missing",
    41002: "appid missing",
    41004: "appsecret missing",
    41005: "media data missing",
    41008: "missing code",
    42001: "access_token expired",
    43004: "require subscribe",
    44003: "empty news data",
    44004: "empty content",
    45009: "reach max api daily quota limit",
    45015: "response out of time limit or subscription is canceled",
    45047: "out of response count limit",
    47001: "data format error",
    47003: "argument invalid!",
}


def random_token(n: int = 136) -> str:
    return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(n))


def new_openid() -> str:
    """A 28-character openid shaped like a real one (``o`` + 27 url-safe characters)."""
    return "o" + "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(27))


@dataclass
class TokenRecord:
    value: str
    pool: str  # "token" (GET /cgi-bin/token) or "stable" (POST /cgi-bin/stable_token)
    issued_at: float
    expires_at: float
    invalid_after: float | None = None


@dataclass
class SimUser:
    openid: str
    following: bool = True
    nickname: str = ""
    subscribe_time: int | None = None
    subscribe_scene: str = "ADD_SCENE_OTHERS"
    qr_scene_str: str = ""
    last_interaction: float | None = None
    custom_sent_in_window: int = 0
    snapshot: bool = False
    blocks_templates: bool = False


@dataclass
class QrTicket:
    ticket: str
    action_name: str
    scene: str
    created_at: float
    expire_seconds: int | None
    url: str

    def expired(self, now: float) -> bool:
        return self.expire_seconds is not None and now >= self.created_at + self.expire_seconds


@dataclass
class OAuthCode:
    code: str
    openid: str
    scope: str
    created_at: float
    used: bool = False


@dataclass
class Faults:
    reject_tokens: bool = False  # every access_token answers 40001 (a token storm that never heals)
    fail_next: list[dict[str, Any]] = field(default_factory=list)  # [{errcode, path?, http_status?}]


class WeChatApiState:
    def __init__(self, credentials: SandboxCredentials, *, push_target: str | None = None,
                 push_mode: str = "safe", push_timeout: float = 5.0) -> None:
        self.credentials = credentials
        self.lock = threading.RLock()
        self.push_target = push_target
        self.push_mode = push_mode
        self.push_timeout = push_timeout
        self.token_ttl = TOKEN_TTL
        self._push_threads: list[threading.Thread] = []
        self.reset()

    # ------------------------------------------------------------------ basics

    def reset(self) -> None:
        """Forget everything (tokens, users, messages, logs, faults); the clock returns to real time."""
        with self.lock:
            self.clock_offset = 0.0
            self.tokens: dict[str, TokenRecord] = {}
            self.current: dict[str, str] = {}
            self.users: dict[str, SimUser] = {}
            self.requests: list[dict[str, Any]] = []
            self.template_messages: list[dict[str, Any]] = []
            self.custom_messages: list[dict[str, Any]] = []
            self.pushes: list[dict[str, Any]] = []
            self.media: dict[str, dict[str, Any]] = {}
            self.qrcodes: dict[str, QrTicket] = {}
            self.oauth_codes: dict[str, OAuthCode] = {}
            self.menu: dict[str, Any] | None = None
            self.jsapi_ticket: tuple[str, float] | None = None
            self.known_templates: set[str] | None = None
            self.faults = Faults()
            self.counters: dict[str, int] = {
                "token_fetches": 0, "stable_token_calls": 0, "stable_token_issued": 0,
                "template_sends": 0, "custom_sends": 0, "media_uploads": 0, "qrcode_creates": 0,
                "oauth_exchanges": 0, "jsapi_ticket_fetches": 0, "token_rejections": 0, "requests": 0,
            }

    def now(self) -> float:
        return time.time() + self.clock_offset

    def advance_clock(self, seconds: float) -> None:
        with self.lock:
            self.clock_offset += seconds

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counters[name] = self.counters.get(name, 0) + n

    # ------------------------------------------------------------------ tokens

    def issue_token(self) -> TokenRecord:
        """``GET /cgi-bin/token``: a new token; the previous one keeps working for 5 more minutes."""
        with self.lock:
            now = self.now()
            self._supersede("token", now)
            rec = TokenRecord(random_token(), "token", now, now + self.token_ttl)
            self.tokens[rec.value] = rec
            self.current["token"] = rec.value
            self.counters["token_fetches"] += 1
            return rec

    def stable_token(self, force_refresh: bool) -> TokenRecord:
        """``POST /cgi-bin/stable_token``: the same token while valid, unless ``force_refresh``."""
        with self.lock:
            now = self.now()
            self.counters["stable_token_calls"] += 1
            cur = self.tokens.get(self.current.get("stable", ""))
            if cur is not None and not force_refresh and self._token_error(cur, now) is None:
                return cur
            self._supersede("stable", now)
            rec = TokenRecord(random_token(), "stable", now, now + self.token_ttl)
            self.tokens[rec.value] = rec
            self.current["stable"] = rec.value
            self.counters["stable_token_issued"] += 1
            return rec

    def _supersede(self, pool: str, now: float) -> None:
        old = self.tokens.get(self.current.get(pool, ""))
        if old is not None:
            limit = now + TOKEN_OVERLAP
            old.invalid_after = limit if old.invalid_after is None else min(old.invalid_after, limit)

    @staticmethod
    def _token_error(rec: TokenRecord, now: float) -> int | None:
        if now >= rec.expires_at:
            return 42001
        if rec.invalid_after is not None and now >= rec.invalid_after:
            return 40001
        return None

    def check_token(self, value: str | None) -> int | None:
        """The errcode a call made with ``value`` gets, or None when the token is good."""
        with self.lock:
            if not value:
                return 41001
            rec = self.tokens.get(value)
            if self.faults.reject_tokens or rec is None:
                code: int | None = 40001
            else:
                code = self._token_error(rec, self.now())
            if code is not None:
                self.counters["token_rejections"] += 1
            return code

    def invalidate_tokens(self) -> None:
        """Every token issued so far answers 40001 from now on (no overlap)."""
        with self.lock:
            now = self.now()
            for rec in self.tokens.values():
                rec.invalid_after = now if rec.invalid_after is None else min(rec.invalid_after, now)

    def expire_tokens(self) -> None:
        """Every token issued so far answers 42001 from now on."""
        with self.lock:
            now = self.now()
            for rec in self.tokens.values():
                rec.expires_at = min(rec.expires_at, now)

    def current_token(self, pool: str = "token") -> str | None:
        with self.lock:
            return self.current.get(pool)

    # ------------------------------------------------------------------ users

    def add_user(self, openid: str | None = None, *, following: bool = True, nickname: str = "",
                 snapshot: bool = False, last_interaction: float | None = None) -> SimUser:
        with self.lock:
            openid = openid or new_openid()
            user = self.users.get(openid)
            if user is None:
                user = SimUser(openid, following=following, nickname=nickname or f"用户{openid[-4:]}",
                               subscribe_time=int(self.now()) if following else None)
                self.users[openid] = user
            else:
                user.following = following
            user.snapshot = snapshot
            if last_interaction is not None:
                self.set_last_interaction(openid, last_interaction)
            return user

    def user(self, openid: str) -> SimUser | None:
        with self.lock:
            return self.users.get(openid)

    def follow(self, openid: str, *, scene: str = "") -> SimUser:
        with self.lock:
            user = self.users.get(openid) or self.add_user(openid, following=False)
            if not user.following:
                user.following = True
                user.subscribe_time = int(self.now())
                user.subscribe_scene = "ADD_SCENE_QR_CODE" if scene else "ADD_SCENE_OTHERS"
                user.qr_scene_str = scene
            return user

    def unfollow(self, openid: str) -> SimUser:
        with self.lock:
            user = self.users.get(openid) or self.add_user(openid, following=False)
            user.following = False
            return user

    def set_last_interaction(self, openid: str, at: float | None) -> None:
        """When the user last wrote (opens the 48-hour window and resets its message count)."""
        with self.lock:
            user = self.users.get(openid) or self.add_user(openid)
            user.last_interaction = at
            user.custom_sent_in_window = 0

    def observe_push(self, message: pc.InboundMessage) -> None:
        """Push-client observer: learn followers and the service window from what users do."""
        with self.lock:
            openid, event = message.openid, message.event
            user = self.users.get(openid)
            if user is None:
                user = self.add_user(openid, following=event not in ("subscribe", "unsubscribe"))
            if event == "subscribe":
                key = str(message.fields.get("EventKey") or "")
                self.follow(openid, scene=key.removeprefix("qrscene_") if key.startswith("qrscene_") else "")
            elif event == "unsubscribe":
                self.unfollow(openid)
            elif event is None and not user.following:
                user.following = True  # only followers can write to the account
            if event is None or event in _WINDOW_EVENTS:
                self.set_last_interaction(openid, self.now())

    # ------------------------------------------------------------------ pushes

    def push_client(self) -> pc.PushClient | None:
        if not self.push_target:
            return None
        c = self.credentials
        return pc.PushClient(self.push_target, c.token, c.app_id, c.encoding_aes_key, c.original_id,
                             mode=self.push_mode, timeout=self.push_timeout, observer=self.observe_push)

    def push(self, message: pc.InboundMessage) -> pc.PushResult | None:
        """Push ``message`` to ``push_target`` now (the caller's thread); None when no target is set."""
        client = self.push_client()
        if client is None:
            self.observe_push(message)
            self._record_push(message, None)
            return None
        result = client.push(message)
        self._record_push(message, result)
        return result

    def push_in_background(self, message: pc.InboundMessage) -> threading.Thread:
        thread = threading.Thread(target=self.push, args=(message,), name="wechat-api-push", daemon=True)
        with self.lock:
            self._push_threads = [t for t in self._push_threads if t.is_alive()] + [thread]
        thread.start()
        return thread

    def _record_push(self, message: pc.InboundMessage, result: pc.PushResult | None) -> None:
        with self.lock:
            self.pushes.append({
                "at": self.now(), "openid": message.openid, "msg_type": message.msg_type,
                "event": message.event, "fields": dict(message.fields),
                "result": result.as_dict() if result is not None else None,
            })

    def wait_for_pushes(self, timeout: float = 10.0) -> None:
        """Join background pushes (template job-finish events)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            threads = list(self._push_threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def user_message(self, openid: str, spec: dict[str, Any]) -> pc.PushResult | None:
        """Push what a user does, described as ``{"type": "text", "content": …}`` etc."""
        gh = self.credentials.original_id
        kind = spec.get("type", "text")
        if kind == "text":
            msg = pc.text_message(gh, openid, str(spec.get("content", "")))
        elif kind == "image":
            msg = pc.image_message(gh, openid, str(spec.get("pic_url", "http://mmbiz.qpic.cn/sandbox.jpg")),
                                   str(spec.get("media_id") or random_token(64)))
        elif kind == "voice":
            msg = pc.voice_message(gh, openid, str(spec.get("media_id") or random_token(64)),
                                   recognition=spec.get("recognition"))
        elif kind == "location":
            x, y = float(spec.get("x", 31.2304)), float(spec.get("y", 121.4737))
            msg = pc.location_message(gh, openid, x, y, label=str(spec.get("label", "")))
        elif kind == "link":
            msg = pc.link_message(gh, openid, str(spec.get("title", "")), str(spec.get("description", "")),
                                  str(spec.get("url", "")))
        elif kind == "event":
            event = str(spec.get("event", ""))
            if event == "subscribe":
                msg = pc.subscribe_event(gh, openid)
            elif event == "unsubscribe":
                msg = pc.unsubscribe_event(gh, openid)
            elif event == "CLICK":
                msg = pc.click_event(gh, openid, str(spec.get("key", "")))
            elif event == "VIEW":
                msg = pc.view_event(gh, openid, str(spec.get("url", spec.get("key", ""))))
            else:
                raise ValueError(f"unsupported event {event!r}")
        else:
            raise ValueError(f"unsupported message type {kind!r}")
        return self.push(msg)

    def scan(self, ticket: str, openid: str) -> pc.PushResult | None:
        """The user scans QR ticket ``ticket``: ``subscribe``+``qrscene_`` or ``SCAN``."""
        with self.lock:
            qr = self.qrcodes.get(ticket)
            if qr is None or qr.expired(self.now()):
                raise KeyError(ticket)
            user = self.users.get(openid)
            following = user is not None and user.following
        gh = self.credentials.original_id
        if following:
            msg = pc.scan_event(gh, openid, qr.scene, ticket)
        else:
            msg = pc.subscribe_event(gh, openid, scene=qr.scene, ticket=ticket)
        return self.push(msg)

    # ------------------------------------------------------------------ views

    def template_messages_for(self, openid: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(m) for m in self.template_messages if openid in (None, m["touser"])]

    def custom_messages_for(self, openid: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(m) for m in self.custom_messages if openid in (None, m["touser"])]

    def requests_for(self, path: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(r) for r in self.requests
                    if r["seq"] > since and (path is None or r["path"] == path)]

    def media_bytes(self, media_id: str) -> tuple[bytes, str] | None:
        with self.lock:
            item = self.media.get(media_id)
            return (item["data"], item["content_type"]) if item else None

    def user_dict(self, user: SimUser) -> dict[str, Any]:
        now = self.now()
        data = asdict(user)
        window_open = user.last_interaction is not None and now - user.last_interaction < SERVICE_WINDOW
        data["service_window_open"] = window_open
        return data

    def users_list(self) -> list[dict[str, Any]]:
        with self.lock:
            return [self.user_dict(u) for u in self.users.values()]

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "app_id": self.credentials.app_id,
                "original_id": self.credentials.original_id,
                "push_target": self.push_target,
                "push_mode": self.push_mode,
                "clock_offset": self.clock_offset,
                "counters": dict(self.counters),
                "faults": {"reject_tokens": self.faults.reject_tokens,
                           "fail_next": copy.deepcopy(self.faults.fail_next)},
                "users": self.users_list(),
            }

    def add_fail_next(self, faults: Iterable[dict[str, Any]]) -> None:
        with self.lock:
            self.faults.fail_next.extend(dict(f) for f in faults)

    def take_fault(self, path: str) -> dict[str, Any] | None:
        with self.lock:
            for i, f in enumerate(self.faults.fail_next):
                if f.get("path") in (None, path):
                    return self.faults.fail_next.pop(i)
            return None
