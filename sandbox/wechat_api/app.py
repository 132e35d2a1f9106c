"""The Official Account API stand-in: a Flask app speaking api.weixin.qq.com's wire format.

Errors are HTTP 200 with ``{"errcode", "errmsg": "… rid: …"}`` as on the real API. The OAuth
authorize page (open.weixin.qq.com) is served here too. ``/_control/…`` is the test/simulator API.
"""

from __future__ import annotations

import html
import re
import secrets
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from flask import Flask, Response, current_app, jsonify, redirect, request

from sandbox import push_client as pc
from sandbox.keys import SandboxCredentials
from sandbox.wechat_api import rules
from sandbox.wechat_api.state import (
    ERRMSG,
    OAUTH_CODE_TTL,
    SERVICE_WINDOW,
    SERVICE_WINDOW_LIMIT,
    OAuthCode,
    QrTicket,
    WeChatApiState,
    random_token,
)

STATE_KEY = "sandbox_wechat_api"
OAUTH_COOKIE = "sandbox_openid"
SECRET_PARAMS = frozenset({"secret", "appsecret", "access_token", "code", "refresh_token"})
_OPENID = re.compile(r"^[A-Za-z0-9_-]{6,64}$")
_CUSTOM_TYPES = frozenset({"text", "image", "voice", "video", "music", "news", "mpnews", "msgmenu", "wxcard",
                           "miniprogrampage"})
_MEDIA_TYPES = {"image": 10 * 1024 * 1024, "voice": 2 * 1024 * 1024, "video": 10 * 1024 * 1024,
                "thumb": 64 * 1024}
_BUTTON_TYPES = frozenset({"click", "view", "miniprogram", "scancode_push", "scancode_waitmsg",
                           "pic_sysphoto", "pic_photo_or_album", "pic_weixin", "location_select",
                           "media_id", "article_id", "article_view_limited"})


def get_state(app: Flask) -> WeChatApiState:
    """The stand-in's state object of an app built by :func:`create_app`."""
    state: WeChatApiState = app.extensions[STATE_KEY]
    return state


def mask_query(query: str) -> str:
    """A query string with secrets (appsecret, access_token, OAuth code) masked, for logs."""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, "***" if k in SECRET_PARAMS else v) for k, v in pairs])


def _rid() -> str:
    return "-".join(secrets.token_hex(4) for _ in range(3))


def err(code: int, detail: str = "") -> Response:
    msg = ERRMSG.get(code, "error") + (f" {detail}" if detail else "")
    resp = jsonify({"errcode": code, "errmsg": f"{msg} rid: {_rid()}"})
    resp.status_code = 200
    return resp


def ok(**fields: Any) -> Response:
    return jsonify({"errcode": 0, "errmsg": "ok", **fields})


def _state() -> WeChatApiState:
    return get_state(current_app)


def _json_body() -> dict[str, Any] | None:
    data = request.get_json(force=True, silent=True)
    return data if isinstance(data, dict) else None


def _check_access_token() -> Response | None:
    code = _state().check_token(request.args.get("access_token"))
    return err(code) if code else None


def _authed_json() -> tuple[dict[str, Any], Response | None]:
    """The preamble of every JSON API call: a valid access_token (40001/41001/42001), then a JSON
    object body (47001)."""
    problem = _check_access_token()
    if problem:
        return {}, problem
    body = _json_body()
    if body is None:
        return {}, err(47001)
    return body, None


def _base_url() -> str:
    return request.host_url.rstrip("/") + request.script_root


def create_app(credentials: SandboxCredentials, *, push_target: str | None = None, push_mode: str = "safe",
               state: WeChatApiState | None = None) -> Flask:
    """Build the stand-in. ``push_target`` is our ``/wechat`` URL (template job-finish events, scans)."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 20 * 1024 * 1024
    st = state or WeChatApiState(credentials, push_target=push_target, push_mode=push_mode)
    app.extensions[STATE_KEY] = st

    # ------------------------------------------------------------------ request log and faults

    @app.before_request
    def _faults() -> Response | None:
        if request.path.startswith("/_control/"):
            return None
        fault = st.take_fault(request.path)
        if fault is None:
            return None
        if fault.get("http_status"):
            return Response("<html><body>系统繁忙</body></html>", status=int(fault["http_status"]),
                            mimetype="text/html")
        return err(int(fault.get("errcode", -1)))

    @app.after_request
    def _record(resp: Response) -> Response:
        if request.path.startswith("/_control/"):
            return resp
        body: Any = None
        if request.files:
            body = {"files": {name: {"filename": f.filename, "content_type": f.mimetype}
                              for name, f in request.files.items()}}
        elif request.content_length:
            body = request.get_json(force=True, silent=True)
            if isinstance(body, dict):
                body = {k: "***" if k in SECRET_PARAMS else v for k, v in body.items()}
            if body is None:
                body = request.get_data(as_text=True)[:2000]
        errcode = None
        if resp.mimetype == "application/json" and not resp.direct_passthrough:
            data = resp.get_json(silent=True)
            if isinstance(data, dict):
                errcode = data.get("errcode", 0)
        with st.lock:
            st.counters["requests"] += 1
            st.requests.append({
                "seq": st.counters["requests"], "at": st.now(), "method": request.method,
                "path": request.path, "query": mask_query(request.query_string.decode("latin-1")),
                "body": body, "status": resp.status_code, "errcode": errcode,
            })
        return resp

    # ------------------------------------------------------------------ tokens

    def _check_app(appid: str | None, secret: str | None) -> Response | None:
        if not appid:
            return err(41002)
        if appid != credentials.app_id:
            return err(40013)
        if not secret:
            return err(41004)
        if not secrets.compare_digest(secret, credentials.app_secret):
            return err(40125)
        return None

    @app.get("/cgi-bin/token")
    def token() -> Response:
        if request.args.get("grant_type") != "client_credential":
            return err(40002)
        problem = _check_app(request.args.get("appid"), request.args.get("secret"))
        if problem:
            return problem
        rec = st.issue_token()
        return jsonify({"access_token": rec.value, "expires_in": st.token_ttl})

    @app.post("/cgi-bin/stable_token")
    def stable_token() -> Response:
        body = _json_body()
        if body is None:
            return err(47001)
        if body.get("grant_type") != "client_credential":
            return err(40002)
        problem = _check_app(body.get("appid"), body.get("secret"))
        if problem:
            return problem
        rec = st.stable_token(bool(body.get("force_refresh")))
        return jsonify({"access_token": rec.value, "expires_in": max(0, int(rec.expires_at - st.now()))})

    # ------------------------------------------------------------------ messages

    def _recipient(openid: Any) -> tuple[Any, Response | None]:
        if not isinstance(openid, str) or not _OPENID.match(openid):
            return None, err(40003)
        user = st.user(openid)
        if user is None:
            return None, err(40003)
        if not user.following:
            return None, err(43004)
        return user, None

    @app.post("/cgi-bin/message/template/send")
    def template_send() -> Response:
        body, problem = _authed_json()
        if problem:
            return problem
        template_id = body.get("template_id")
        if not isinstance(template_id, str) or not template_id or (
            st.known_templates is not None and template_id not in st.known_templates
        ):
            return err(40037)
        data = body.get("data")
        if not isinstance(data, dict):
            return err(47001)
        bad = rules.invalid_keys(data)
        if bad:
            return err(47003, f"data.{bad[0]}.value invalid")
        user, problem = _recipient(body.get("touser"))
        if problem:
            return problem
        with st.lock:
            st.counters["template_sends"] += 1
            msgid = secrets.randbits(62) | (1 << 61)
            status = "failed:user block" if user.blocks_templates else "success"
            st.template_messages.append({
                "msgid": msgid, "touser": user.openid, "template_id": template_id, "url": body.get("url"),
                "miniprogram": body.get("miniprogram"), "data": data, "sent_at": st.now(), "status": status,
            })
        event = pc.template_finish_event(credentials.original_id, user.openid, msgid, status)
        st.push_in_background(event)
        return ok(msgid=msgid)

    @app.post("/cgi-bin/message/custom/send")
    def custom_send() -> Response:
        body, problem = _authed_json()
        if problem:
            return problem
        msgtype = body.get("msgtype")
        if msgtype not in _CUSTOM_TYPES:
            return err(40008)
        payload = body.get(msgtype)
        if not isinstance(payload, dict):
            return err(47001)
        if msgtype == "text" and not str(payload.get("content") or "").strip():
            return err(44004)
        if msgtype in ("image", "voice", "video") and payload.get("media_id") not in st.media:
            return err(40007)
        if msgtype == "news":
            articles = payload.get("articles")
            if not isinstance(articles, list) or not articles:
                return err(44003)
        user, problem = _recipient(body.get("touser"))
        if problem:
            return problem
        with st.lock:
            now = st.now()
            if user.last_interaction is None or now - user.last_interaction >= SERVICE_WINDOW:
                return err(45015)
            if user.custom_sent_in_window >= SERVICE_WINDOW_LIMIT:
                return err(45047)
            user.custom_sent_in_window += 1
            st.counters["custom_sends"] += 1
            st.custom_messages.append({"touser": user.openid, "msgtype": msgtype, msgtype: payload,
                                       "sent_at": now})
        return ok()

    # ------------------------------------------------------------------ media, QR, user, menu, ticket

    @app.post("/cgi-bin/media/upload")
    def media_upload() -> Response:
        problem = _check_access_token()
        if problem:
            return problem
        media_type = request.args.get("type", "")
        if media_type not in _MEDIA_TYPES:
            return err(40004)
        upload = request.files.get("media")
        if upload is None:
            return err(41005)
        data = upload.read()
        if not data:
            return err(41005)
        if len(data) > _MEDIA_TYPES[media_type]:
            return err(40009)
        media_id = random_token(64)
        created_at = int(st.now())
        with st.lock:
            st.counters["media_uploads"] += 1
            st.media[media_id] = {"type": media_type, "data": data, "filename": upload.filename,
                                  "content_type": upload.mimetype or "application/octet-stream",
                                  "created_at": created_at}
        return jsonify({"type": media_type, "media_id": media_id, "created_at": created_at})

    @app.get("/cgi-bin/media/get")
    def media_get() -> Response:
        problem = _check_access_token()
        if problem:
            return problem
        found = st.media_bytes(request.args.get("media_id", ""))
        if found is None:
            return err(40007)
        return Response(found[0], mimetype=found[1])

    @app.post("/cgi-bin/qrcode/create")
    def qrcode_create() -> Response:
        body, problem = _authed_json()
        if problem:
            return problem
        action = body.get("action_name")
        info = body.get("action_info")
        scene_info = info.get("scene") if isinstance(info, dict) else None
        actions = ("QR_SCENE", "QR_STR_SCENE", "QR_LIMIT_SCENE", "QR_LIMIT_STR_SCENE")
        if action not in actions or not isinstance(scene_info, dict):
            return err(40053)
        if action.endswith("STR_SCENE"):
            scene = scene_info.get("scene_str")
            if not isinstance(scene, str) or not 1 <= len(scene) <= 64:
                return err(40053)
        else:
            scene_id = scene_info.get("scene_id")
            limit = 100000 if action == "QR_LIMIT_SCENE" else 2**32 - 1
            if not isinstance(scene_id, int) or not 1 <= scene_id <= limit:
                return err(40053)
            scene = str(scene_id)
        expire: int | None = None
        if action.startswith("QR_LIMIT"):
            expire = None
        else:
            expire = int(body.get("expire_seconds") or 60)
            expire = max(60, min(expire, 2592000))
        ticket = "gQ" + random_token(94).replace("_", "").replace("-", "") + "=="
        code = random_token(22)
        qr = QrTicket(ticket, action, scene, st.now(), expire, f"http://weixin.qq.com/q/{code}")
        with st.lock:
            st.counters["qrcode_creates"] += 1
            st.qrcodes[ticket] = qr
        out: dict[str, Any] = {"ticket": ticket, "url": qr.url}
        if expire is not None:
            out["expire_seconds"] = expire
        return jsonify(out)

    @app.get("/cgi-bin/showqrcode")
    def showqrcode() -> Response:
        # Real host: mp.weixin.qq.com. Served here so the simulator can show the image.
        import io

        import qrcode

        qr = st.qrcodes.get(request.args.get("ticket", ""))
        if qr is None:
            return Response("ticket 无效", status=404, mimetype="text/plain")
        buf = io.BytesIO()
        qrcode.make(qr.url).save(buf)
        return Response(buf.getvalue(), mimetype="image/png")

    @app.get("/cgi-bin/user/info")
    def user_info() -> Response:
        problem = _check_access_token()
        if problem:
            return problem
        openid = request.args.get("openid", "")
        user = st.user(openid)
        if user is None:
            return err(40003)
        if not user.following:
            return jsonify({"subscribe": 0, "openid": openid})
        return jsonify({
            "subscribe": 1, "openid": openid, "language": request.args.get("lang", "zh_CN"),
            "subscribe_time": user.subscribe_time or 0, "remark": "", "groupid": 0, "tagid_list": [],
            "subscribe_scene": user.subscribe_scene, "qr_scene": 0, "qr_scene_str": user.qr_scene_str,
        })

    @app.post("/cgi-bin/menu/create")
    def menu_create() -> Response:
        body, problem = _authed_json()
        if problem:
            return problem
        buttons = body.get("button")
        if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
            return err(40016)
        for b in buttons:
            if not isinstance(b, dict) or not b.get("name"):
                return err(40016)
            subs = b.get("sub_button")
            items = subs if subs else [b]
            if subs is not None and (not isinstance(subs, list) or len(subs) > 5):
                return err(40016)
            for item in items:
                if not isinstance(item, dict) or item.get("type") not in _BUTTON_TYPES:
                    return err(40017)
        with st.lock:
            st.menu = body
        return ok()

    @app.get("/cgi-bin/ticket/getticket")
    def getticket() -> Response:
        problem = _check_access_token()
        if problem:
            return problem
        if request.args.get("type") not in ("jsapi", "wx_card"):
            return err(40097)
        with st.lock:
            now = st.now()
            if st.jsapi_ticket is None or now >= st.jsapi_ticket[1]:
                st.jsapi_ticket = (random_token(86), now + 7200)
            st.counters["jsapi_ticket_fetches"] += 1
            ticket, expires = st.jsapi_ticket
        return ok(ticket=ticket, expires_in=int(expires - now))

    # ------------------------------------------------------------------ OAuth (open.weixin.qq.com stand-in)

    @app.get("/connect/oauth2/authorize")
    def oauth_authorize() -> Any:
        args = request.args
        if args.get("appid") != credentials.app_id:
            return _page("参数错误", "appid 无效。", status=400)
        redirect_uri = args.get("redirect_uri", "")
        if urlsplit(redirect_uri).scheme not in ("http", "https"):
            return _page("参数错误", "redirect_uri 参数错误。", status=400)
        scope = args.get("scope", "")
        if scope not in ("snsapi_base", "snsapi_userinfo") or args.get("response_type") != "code":
            return _page("参数错误", "scope 参数错误或没有 scope 权限。", status=400)
        openid = args.get("sandbox_openid") or request.cookies.get(OAUTH_COOKIE)
        if not openid:
            return _chooser()
        if st.user(openid) is None:
            st.add_user(openid)
        code = secrets.token_urlsafe(24)
        with st.lock:
            st.oauth_codes[code] = OAuthCode(code, openid, scope, st.now())
        return redirect(_with_query(redirect_uri, code=code, state=args.get("state", "")), code=302)

    def _chooser() -> Response:
        base = request.base_url
        params = {k: v for k, v in request.args.items() if k != "sandbox_openid"}
        items = []
        for user in st.users_list():
            link = base + "?" + urlencode({**params, "sandbox_openid": user["openid"]})
            items.append(f'<li><a href="{html.escape(link)}">{html.escape(user["nickname"])}'
                          f"（{html.escape(user['openid'])}）</a></li>")
        new_link = base + "?" + urlencode({**params, "sandbox_openid": _new_openid()})
        body = (
            "<p>请选择模拟的微信用户：</p><ul>" + "".join(items) + "</ul>"
            f'<p><a href="{html.escape(new_link)}">以新用户身份继续</a></p>'
        )
        return _page("微信授权（沙箱）", body, raw=True)

    @app.get("/sns/oauth2/access_token")
    def oauth_access_token() -> Response:
        args = request.args
        problem = _check_app(args.get("appid"), args.get("secret"))
        if problem:
            return problem
        if args.get("grant_type") != "authorization_code":
            return err(40002)
        code = args.get("code")
        if not code:
            return err(41008)
        with st.lock:
            rec = st.oauth_codes.get(code)
            if rec is None or st.now() - rec.created_at >= OAUTH_CODE_TTL:
                return err(40029)
            if rec.used:
                return err(40163)
            rec.used = True
            st.counters["oauth_exchanges"] += 1
            user = st.user(rec.openid)
        out: dict[str, Any] = {
            "access_token": random_token(100), "expires_in": 7200, "refresh_token": random_token(100),
            "openid": rec.openid, "scope": rec.scope,
        }
        if user is not None and user.snapshot:
            out["is_snapshotuser"] = 1
        return jsonify(out)

    from sandbox.wechat_api.control import register_control

    register_control(app, st)
    return app


def _new_openid() -> str:
    from sandbox.wechat_api.state import new_openid

    return new_openid()


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = parts.query + ("&" if parts.query else "") + urlencode(params, quote_via=quote)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _page(title: str, message: str, *, status: int = 200, raw: bool = False) -> Response:
    content = message if raw else f"<p>{html.escape(message)}</p>"
    doc = (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>{content}</body></html>"
    )
    return Response(doc, status=status, mimetype="text/html")
