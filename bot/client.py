"""Gateway to the WeChat Official Account API — the only module that builds wechatpy's clients.

What it adds around ``wechatpy.WeChatClient`` / ``WeChatOAuth``:

* a timeout on every HTTP call (wechatpy sends its token fetch and OAuth calls without one);
* a configurable base URL (``WECHAT_API_BASE``: a proxy or the sandbox stand-in);
* no unbounded token-retry recursion: wechatpy's ``auto_retry`` is off, and on 40001/40014/42001 we ask
  the :class:`~bot.tokens.TokenRefresher` once (it may find a newer token without fetching) and retry
  once;
* the access token comes from a shared :class:`~bot.tokens.TokenStore`; this client only reads it;
* typed results and a small error hierarchy (retryable vs permanent) instead of dicts and bare
  exceptions.

No Flask here: ``app.py`` wires it from settings.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from wechatpy import WeChatClient
from wechatpy.exceptions import WeChatException
from wechatpy.oauth import WeChatOAuth
from wechatpy.session import SessionStorage

from bot.tokens import FetchedToken, MemoryTokenStore, TokenRefresher, TokenStore

OFFICIAL_API_BASE = "https://api.weixin.qq.com"
OFFICIAL_OAUTH_BASE = "https://open.weixin.qq.com"
SHOWQRCODE_URL = "https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket="
DEFAULT_TIMEOUT = 5.0

# errcodes worth naming
SYSTEM_BUSY = -1
INVALID_CREDENTIAL = 40001
INVALID_OPENID = 40003
INVALID_ACCESS_TOKEN = 40014
EXPIRED_ACCESS_TOKEN = 42001
NOT_FOLLOWING = 43004
DAILY_QUOTA = 45009
MINUTE_QUOTA = 45011
OUTSIDE_SERVICE_WINDOW = 45015
SERVICE_WINDOW_COUNT = 45047
TEMPLATE_ARGUMENT_INVALID = 47003
OAUTH_CODE_INVALID = 40029
OAUTH_CODE_USED = 40163

TOKEN_ERRCODES = frozenset({INVALID_CREDENTIAL, INVALID_ACCESS_TOKEN, EXPIRED_ACCESS_TOKEN})
RETRYABLE_ERRCODES = frozenset({SYSTEM_BUSY, DAILY_QUOTA, MINUTE_QUOTA, 45033})


# ----------------------------------------------------------------------------------------- errors


class WeChatApiError(Exception):
    """A call to the Official Account API failed. ``errcode`` is None for transport/HTTP failures."""

    def __init__(self, errcode: int | None, errmsg: str = "", *, http_status: int | None = None) -> None:
        self.errcode = errcode
        self.errmsg = errmsg
        self.http_status = http_status
        super().__init__(f"WeChat API error {errcode}: {errmsg}" if errcode is not None else errmsg)


class RetryableWeChatError(WeChatApiError):
    """Worth retrying later: network, timeout, 5xx, -1 system busy, quota, a token still rejected."""


class PermanentWeChatError(WeChatApiError):
    """Retrying the same call will not help (43004 not following, 40003, 47003, 45015, 45047, …)."""


class AccessTokenRejected(RetryableWeChatError):
    """The token was rejected again after one refresh (bounded; no further fetching)."""


def classify(errcode: int | None, errmsg: str = "", *, http_status: int | None = None) -> WeChatApiError:
    if errcode is None:
        if http_status is None or http_status >= 500 or http_status == 429:
            return RetryableWeChatError(None, errmsg or f"HTTP {http_status}", http_status=http_status)
        return PermanentWeChatError(None, errmsg or f"HTTP {http_status}", http_status=http_status)
    if errcode in RETRYABLE_ERRCODES:
        return RetryableWeChatError(errcode, errmsg)
    if errcode in TOKEN_ERRCODES:
        return AccessTokenRejected(errcode, errmsg)
    return PermanentWeChatError(errcode, errmsg)


def _translate(exc: Exception) -> WeChatApiError:
    if isinstance(exc, WeChatApiError):
        return exc
    if isinstance(exc, WeChatException):
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        errcode = exc.errcode if isinstance(exc.errcode, int) else None
        return classify(errcode, str(exc.errmsg or ""), http_status=status if errcode is None else None)
    if isinstance(exc, requests.Timeout):
        return RetryableWeChatError(None, "timeout")
    if isinstance(exc, requests.RequestException):
        return RetryableWeChatError(None, f"network error: {type(exc).__name__}")
    if isinstance(exc, ValueError | KeyError | TypeError):
        return RetryableWeChatError(None, f"unexpected response: {type(exc).__name__}")
    raise exc


# ---------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TemplateSendResult:
    msgid: int


@dataclass(frozen=True)
class QrCode:
    ticket: str
    url: str  # the content to encode; render the image ourselves, or use image_url
    expire_seconds: int | None  # None for a permanent (QR_LIMIT_STR_SCENE) code

    @property
    def image_url(self) -> str:
        return SHOWQRCODE_URL + quote(self.ticket, safe="")


@dataclass(frozen=True)
class UserInfo:
    openid: str
    subscribed: bool
    subscribe_time: int | None = None
    subscribe_scene: str | None = None
    qr_scene_str: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OAuthIdentity:
    openid: str
    is_snapshot: bool  # 朋友圈快照页 virtual user: never bind or charge it
    scope: str = "snsapi_base"


# ------------------------------------------------------------------------------- transport hacks


class _RewritingAdapter(HTTPAdapter):
    """Sends requests addressed to ``origin`` to ``target`` instead, with a default timeout.

    HACK: wechatpy hard-codes ``https://api.weixin.qq.com`` (``API_BASE_URL`` and, separately, the token
    URL in ``WeChatClient.fetch_access_token``; ``WeChatOAuth.API_BASE_URL`` likewise). Mounting this
    adapter on the clients' ``_http`` sessions reroutes every call without patching wechatpy. It also
    supplies a timeout to the calls wechatpy makes without one.
    """

    def __init__(self, origin: str, target: str, timeout: float) -> None:
        super().__init__()
        self.origin = origin.rstrip("/")
        self.target = target.rstrip("/")
        self.default_timeout = timeout

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        url = request.url or ""
        if self.target != self.origin and (url == self.origin or url.startswith(self.origin + "/")):
            request.url = self.target + url[len(self.origin):]
            # proxies were chosen for the original host; choose again for the real one (honours NO_PROXY)
            kwargs["proxies"] = requests.utils.get_environ_proxies(request.url)
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        return super().send(request, **kwargs)


def _reroute(session: requests.Session, api_base: str, timeout: float) -> None:
    session.mount(OFFICIAL_API_BASE + "/", _RewritingAdapter(OFFICIAL_API_BASE, api_base, timeout))


class _CallTokenSession(SessionStorage):  # type: ignore[misc]
    """wechatpy session storage that hands wechatpy the token chosen for the current call (per thread).

    Tokens are written only by :class:`~bot.tokens.TokenRefresher`; ``set`` is ignored here.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def use(self, token: str | None) -> None:
        self._local.token = token

    def get(self, key: str, default: Any = None) -> Any:
        if key.endswith("_access_token"):
            return getattr(self._local, "token", None) or default
        return default

    def set(self, key: str, value: Any, ttl: int | None = None) -> None:
        return None

    def delete(self, key: str) -> None:
        return None


# ----------------------------------------------------------------------------------------- client


class WeChatApiClient:
    """Typed, bounded access to the Official Account API.

    ``grant_endpoint`` chooses how the refresher fetches: ``"stable"`` (``POST /cgi-bin/stable_token``, safe
    across processes; the default) or ``"token"`` (wechatpy's own ``GET /cgi-bin/token``).
    """

    def __init__(self, app_id: str, app_secret: str, *, api_base: str = OFFICIAL_API_BASE,
                 oauth_base: str = OFFICIAL_OAUTH_BASE, timeout: float = DEFAULT_TIMEOUT,
                 token_store: TokenStore | None = None, refresher: TokenRefresher | None = None,
                 grant_endpoint: str = "stable", ticket_store: TokenStore | None = None) -> None:
        if grant_endpoint not in ("stable", "token"):
            raise ValueError("grant_endpoint must be 'stable' or 'token'")
        self.app_id = app_id
        self._secret = app_secret
        self.api_base = api_base.rstrip("/")
        self.oauth_base = oauth_base.rstrip("/")
        self.timeout = timeout
        self.grant_endpoint = grant_endpoint
        self.token_store: TokenStore = token_store or MemoryTokenStore()
        self.ticket_store: TokenStore = ticket_store or MemoryTokenStore()
        self._session = _CallTokenSession()
        # Readers: auto_retry=False disables wechatpy's unbounded 40001/42001 recursion.
        self._wx = WeChatClient(app_id, app_secret, session=self._session, timeout=timeout, auto_retry=False)
        _reroute(self._wx._http, self.api_base, timeout)
        # Fetcher: a separate instance so that its expires_at bookkeeping never makes readers fetch.
        self._fetcher_wx = WeChatClient(app_id, app_secret, timeout=timeout, auto_retry=False)
        _reroute(self._fetcher_wx._http, self.api_base, timeout)
        self.refresher = refresher or TokenRefresher(self.token_store, self.fetch_token)

    def __repr__(self) -> str:
        return f"WeChatApiClient(app_id={self.app_id!r}, api_base={self.api_base!r})"

    # ------------------------------------------------------------------ tokens

    def fetch_token(self, force_refresh: bool = False) -> FetchedToken:
        """One fetch from WeChat (used by the refresher; don't call from request handlers)."""
        try:
            if self.grant_endpoint == "token":
                result = self._fetcher_wx.fetch_access_token()
            else:
                resp = self._fetcher_wx._http.post(
                    OFFICIAL_API_BASE + "/cgi-bin/stable_token", timeout=self.timeout,
                    json={"grant_type": "client_credential", "appid": self.app_id, "secret": self._secret,
                          "force_refresh": force_refresh},
                )
                if resp.status_code != 200:
                    raise classify(None, f"HTTP {resp.status_code}", http_status=resp.status_code)
                result = resp.json()
                if result.get("errcode"):
                    raise classify(int(result["errcode"]), str(result.get("errmsg", "")))
            return FetchedToken(str(result["access_token"]), int(result.get("expires_in", 7200)))
        except Exception as exc:
            err = _translate(exc)
            if isinstance(err, AccessTokenRejected):  # not a token problem at the token endpoint
                err = PermanentWeChatError(err.errcode, err.errmsg)
            raise err from exc

    def _call(self, op: Callable[[WeChatClient], Any]) -> Any:
        """Run ``op`` with the stored token; on a token error refresh once and retry once."""
        token = self.refresher.current()
        try:
            return self._with_token(token, op)
        except AccessTokenRejected:
            pass
        token = self.refresher.refresh(stale=token)
        return self._with_token(token, op)

    def _with_token(self, token: str, op: Callable[[WeChatClient], Any]) -> Any:
        self._session.use(token)
        try:
            result = op(self._wx)
        except Exception as exc:
            raise _translate(exc) from exc
        finally:
            self._session.use(None)
        if isinstance(result, requests.Response):  # wechatpy returns the response when it is not JSON
            raise RetryableWeChatError(None, "response is not JSON", http_status=result.status_code)
        return result

    # ------------------------------------------------------------------ messages

    def send_template(self, openid: str, template_id: str, data: Mapping[str, Any],
                      url: str | None = None) -> TemplateSendResult:
        """``data`` as ``{"thing1": "…"}`` or ``{"thing1": {"value": "…"}}``."""
        payload = {k: v if isinstance(v, Mapping) else {"value": str(v)} for k, v in data.items()}
        res = self._call(lambda wx: wx.message.send_template(openid, template_id, payload, url=url))
        return TemplateSendResult(int(res["msgid"]))

    def send_custom_text(self, openid: str, text: str) -> None:
        self._call(lambda wx: wx.message.send_text(openid, text))

    def send_custom_image(self, openid: str, media_id: str) -> None:
        self._call(lambda wx: wx.message.send_image(openid, media_id))

    def send_custom_news(self, openid: str, title: str, description: str, url: str,
                         picurl: str | None = None) -> None:
        """One link card (图文消息, ``msgtype: news`` with a single article)."""
        article = {"title": title, "description": description, "url": url, "picurl": picurl or ""}
        self._call(lambda wx: wx.message.send_articles(openid, [article]))

    # ------------------------------------------------------------------ media, QR, users, menu, jsapi

    def upload_image(self, data: bytes, filename: str = "image.png", content_type: str = "image/png") -> str:
        """Upload a temporary image (3 days) and return its ``media_id``."""
        res = self._call(lambda wx: wx.media.upload("image", (filename, data, content_type)))
        return str(res["media_id"])

    def create_qr_scene(self, scene_str: str, expire_seconds: int | None = 2592000) -> QrCode:
        """A parametric QR: temporary (``QR_STR_SCENE``) or, with ``expire_seconds=None``, permanent."""
        body: dict[str, Any] = {"action_info": {"scene": {"scene_str": scene_str}}}
        if expire_seconds is None:
            body["action_name"] = "QR_LIMIT_STR_SCENE"
        else:
            body["action_name"] = "QR_STR_SCENE"
            body["expire_seconds"] = expire_seconds
        res = self._call(lambda wx: wx.qrcode.create(body))
        exp = res.get("expire_seconds")
        return QrCode(str(res["ticket"]), str(res["url"]), int(exp) if exp is not None else None)

    def get_user_info(self, openid: str) -> UserInfo:
        res = self._call(lambda wx: wx.user.get(openid, lang="zh_CN"))
        subscribed = int(res.get("subscribe", 0)) == 1
        return UserInfo(
            openid=str(res.get("openid", openid)), subscribed=subscribed,
            subscribe_time=int(res["subscribe_time"]) if res.get("subscribe_time") else None,
            subscribe_scene=res.get("subscribe_scene"), qr_scene_str=res.get("qr_scene_str") or None, raw=res,
        )

    def create_menu(self, menu: Mapping[str, Any]) -> None:
        self._call(lambda wx: wx.menu.create(dict(menu)))

    def get_jsapi_ticket(self) -> str:
        """The JS-SDK ticket, cached in ``ticket_store`` until 5 minutes before it expires."""
        cached = self.ticket_store.get()
        if cached is not None and cached.remaining() > 300:
            return cached.value
        res = self._call(lambda wx: wx.jsapi.get_ticket("jsapi"))
        ticket = str(res["ticket"])
        self.ticket_store.set(ticket, time.time() + int(res.get("expires_in", 7200)))
        return ticket

    # ------------------------------------------------------------------ OAuth (snsapi_base)

    def _oauth(self, redirect_uri: str = "", state: str = "", scope: str = "snsapi_base") -> WeChatOAuth:
        oauth = WeChatOAuth(self.app_id, self._secret, redirect_uri, scope=scope, state=state)
        oauth.OAUTH_BASE_URL = self.oauth_base + "/connect/"
        _reroute(oauth._http, self.api_base, self.timeout)
        return oauth

    def oauth_authorize_url(self, redirect_uri: str, state: str, scope: str = "snsapi_base") -> str:
        """Where to send the browser; ``state`` is URL-encoded here (wechatpy doesn't)."""
        return str(self._oauth(redirect_uri, quote(state, safe=""), scope).authorize_url)

    def exchange_oauth_code(self, code: str) -> OAuthIdentity:
        """Trade the single-use ``code`` for the user's openid (one WeChatOAuth per call: it keeps state)."""
        try:
            res = self._oauth().fetch_access_token(code)
        except Exception as exc:
            raise _translate(exc) from exc
        return OAuthIdentity(str(res["openid"]), int(res.get("is_snapshotuser", 0) or 0) == 1,
                             str(res.get("scope", "snsapi_base")))
