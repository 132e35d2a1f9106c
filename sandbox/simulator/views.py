"""``/sandbox/``: the chat simulator page and its JSON endpoints (sandbox mode only).

Every chat message goes to ``/wechat`` through the push client, exactly as WeChat's servers would
send it (safe mode by default); the answer is judged as WeChat judges it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request, session

from db import current_db
from payments.paypage import OPENID_KEY
from sandbox.keys import SandboxCredentials
from sandbox.simulator import feed, identities, panel, wxpay
from sandbox.wechat_api import WeChatApiState
from sandbox.wechatpay import StandIn

EXTENSION = "renopay.simulator"
WECHAT_MARK_COOKIE = "renopay_sandbox_wechat"  # "this browser is a simulated phone's WeChat"
OAUTH_COOKIE = "sandbox_openid"  # read by the Official Account stand-in's OAuth page
_OPENID = re.compile(r"^[A-Za-z0-9_-]{6,64}$")
MAX_TEXT = 600

bp = Blueprint("sandbox_simulator", __name__, url_prefix="/sandbox", static_folder="static",
               static_url_path="/static")


@dataclass
class Simulator:
    creds: SandboxCredentials
    wx: WeChatApiState
    pay: StandIn
    log: feed.ConversationLog


def sim() -> Simulator:
    found: Simulator = current_app.extensions[EXTENSION]
    return found


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    return data if isinstance(data, dict) else {}


def _openid(value: Any) -> str:
    if not isinstance(value, str) or not _OPENID.match(value):
        abort(400, "openid 格式不正确")
    return value


def push(openid: str, spec: dict[str, Any], shown: str) -> dict[str, Any]:
    """The user does something on their phone: push it to /wechat now and keep what they see."""
    s = sim()
    if spec.get("type") == "event":
        s.log.event(openid, s.wx.now(), shown)
    else:
        s.log.sent(openid, s.wx.now(), shown)
    result = s.wx.user_message(openid, spec)
    reply = s.log.answered(openid, s.wx.now(), result)
    outcome = result.as_dict() if result is not None else {"verdict": "no_target"}
    return {"verdict": outcome.get("verdict"), "attempts": outcome.get("attempts"),
            "reason": outcome.get("reason"), "user_sees": outcome.get("user_sees"), "reply": reply}


@bp.get("/")
def page() -> str:
    settings = current_app.extensions["renopay.settings"]
    return render_template("sandbox/simulator.html", company=settings.company_name,
                           push_mode=sim().wx.push_mode)


@bp.get("/api/identities")
def get_identities() -> Response:
    return jsonify(identities.list_identities(current_db(), sim().wx))


@bp.post("/api/identities")
def add_identity() -> Response:
    """A new WeChat user follows the account; a new staff member also binds with a fresh invite code."""
    from handlers.identity import create_invite
    from payments.models import StaffRole

    body = _body()
    user = sim().wx.add_user(following=False, nickname=str(body.get("name") or "")[:20])
    answer = push(user.openid, {"type": "event", "event": "subscribe"}, "关注了公众号")
    role = body.get("role")
    if body.get("kind") == "staff":
        if role not in ("sales", "finance", "admin"):
            abort(400, "角色只能是 sales / finance / admin")
        with current_db().transaction() as s:
            code = create_invite(s, StaffRole(role), name=str(body.get("name") or "") or None)
        answer = push(user.openid, {"type": "text", "content": f"员工 {code}"}, f"员工 {code}")
    return jsonify({"openid": user.openid, "answer": answer})


@bp.get("/api/feed")
def get_feed() -> Response:
    openid = _openid(request.args.get("openid"))
    s = sim()
    return jsonify({"openid": openid, "items": feed.timeline(s.log, s.wx, openid)})


@bp.post("/api/send")
def send() -> Response:
    body = _body()
    openid = _openid(body.get("openid"))
    if body.get("click"):
        key, label = str(body["click"]), str(body.get("label") or body["click"])
        return jsonify(push(openid, {"type": "event", "event": "CLICK", "key": key}, f"点击菜单“{label}”"))
    text = str(body.get("text") or "").strip()
    if not text:
        abort(400, "消息不能为空")
    return jsonify(push(openid, {"type": "text", "content": text[:MAX_TEXT]}, text[:MAX_TEXT]))


@bp.post("/api/scan")
def scan() -> Any:
    """The phone scans the newest parametric QR (an invite a staff phone received)."""
    openid = _openid(_body().get("openid"))
    s = sim()
    with s.wx.lock:
        live = [q for q in s.wx.qrcodes.values() if not q.expired(s.wx.now())]
    if not live:
        return jsonify({"error": "没有可扫描的公众号二维码，请先让员工发送“邀请 …”"}), 404
    ticket = max(live, key=lambda q: q.created_at).ticket
    s.log.event(openid, s.wx.now(), "扫描了公众号二维码")
    result = s.wx.scan(ticket, openid)
    reply = s.log.answered(openid, s.wx.now(), result)
    return jsonify({"verdict": result.verdict.value if result else None, "reply": reply})


@bp.post("/api/browse")
def browse() -> Response:
    """Before a phone opens a link: its WeChat identity for OAuth, and the in-WeChat marker."""
    openid = _openid(_body().get("openid"))
    if session.get(OPENID_KEY) not in (None, openid):
        session.pop(OPENID_KEY)  # another phone paid in this browser before: OAuth again as this one
    response = jsonify({"openid": openid})
    response.set_cookie(OAUTH_COOKIE, openid, path="/", httponly=True, samesite="Lax")
    response.set_cookie(WECHAT_MARK_COOKIE, "1", path="/", httponly=True, samesite="Lax")
    return response


@bp.post("/api/browse/close")
def browse_close() -> Response:
    response = jsonify({"closed": True})
    response.delete_cookie(WECHAT_MARK_COOKIE, path="/")
    return response


@bp.post("/api/wxpay/check")
def wxpay_check() -> Any:
    body = _body()
    s = sim()
    try:
        params, openid = dict(body.get("params") or {}), _openid(body.get("openid"))
        facts = wxpay.check_request(s.creds, s.pay, params, openid)
    except wxpay.BridgeRefused as exc:
        return jsonify({"err_msg": "get_brand_wcpay_request:fail", "message": exc.message}), 422
    settings = current_app.extensions["renopay.settings"]
    return jsonify(facts.as_dict(settings.company_name))


@bp.post("/api/wxpay/pay")
def wxpay_pay() -> Any:
    body = _body()
    s = sim()
    try:
        transaction = wxpay.pay(s.creds, s.pay, dict(body.get("params") or {}), _openid(body.get("openid")))
    except wxpay.BridgeRefused as exc:
        return jsonify({"err_msg": "get_brand_wcpay_request:fail", "message": exc.message}), 422
    return jsonify({"err_msg": "get_brand_wcpay_request:ok", "transaction_id": transaction["transaction_id"]})


@bp.get("/api/panel")
def get_panel() -> Response:
    s = sim()
    return jsonify({
        "erp": panel.erp_view(current_app),
        "outbox": panel.outbox_view(current_app, current_db()),
        "logs": panel.logs_view(s.wx, s.pay),
    })


@bp.get("/media/<media_id>")
def media(media_id: str) -> Response:
    found = sim().wx.media_bytes(media_id)
    if found is None:
        abort(404)
    return Response(found[0], mimetype=found[1])


@bp.errorhandler(400)
@bp.errorhandler(404)
def json_error(exc: Any) -> tuple[Response, int]:
    return jsonify({"error": getattr(exc, "description", "请求无效")}), int(getattr(exc, "code", 400))

