"""Control API of the Official Account stand-in (``/_control/…``), for tests and the chat simulator.

Answers are JSON; an unknown user/ticket/media is a 404 ``{"error": …}``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, redirect, request

from sandbox.push_client import MODES
from sandbox.wechat_api.state import WeChatApiState


def _body() -> dict[str, Any]:
    data = request.get_json(force=True, silent=True)
    return data if isinstance(data, dict) else {}


def _not_found(what: str) -> tuple[Response, int]:
    return jsonify({"error": f"{what} not found"}), 404


def register_control(app: Flask, st: WeChatApiState) -> None:
    def user_or_404(openid: str) -> Any:
        return st.user(openid)

    @app.get("/_control/state")
    def c_state() -> Response:
        return jsonify(st.snapshot())

    @app.post("/_control/reset")
    def c_reset() -> Response:
        st.reset()
        return jsonify({"ok": True})

    @app.get("/_control/requests")
    def c_requests() -> Response:
        return jsonify(st.requests_for(request.args.get("path"), int(request.args.get("since", 0))))

    @app.get("/_control/counters")
    def c_counters() -> Response:
        with st.lock:
            return jsonify(dict(st.counters))

    @app.get("/_control/templates")
    def c_templates() -> Response:
        return jsonify(st.template_messages_for(request.args.get("openid")))

    @app.get("/_control/custom")
    def c_custom() -> Response:
        return jsonify(st.custom_messages_for(request.args.get("openid")))

    @app.get("/_control/pushes")
    def c_pushes() -> Response:
        openid = request.args.get("openid")
        with st.lock:
            return jsonify([p for p in st.pushes if openid in (None, p["openid"])])

    @app.get("/_control/media")
    def c_media_list() -> Response:
        with st.lock:
            return jsonify([{"media_id": k, "type": v["type"], "filename": v["filename"],
                             "content_type": v["content_type"], "size": len(v["data"]),
                             "created_at": v["created_at"]} for k, v in st.media.items()])

    @app.get("/_control/media/<media_id>")
    def c_media(media_id: str) -> Any:
        found = st.media_bytes(media_id)
        if found is None:
            return _not_found("media")
        return Response(found[0], mimetype=found[1])

    @app.get("/_control/menu")
    def c_menu() -> Response:
        return jsonify(st.menu)

    @app.get("/_control/qrcodes")
    def c_qrcodes() -> Response:
        with st.lock:
            return jsonify([vars(q) for q in st.qrcodes.values()])

    @app.post("/_control/qrcode/scan")
    def c_scan() -> Any:
        body = _body()
        openid = body.get("openid") or st.add_user(following=False).openid
        try:
            result = st.scan(str(body.get("ticket", "")), openid)
        except KeyError:
            return _not_found("ticket (or expired)")
        return jsonify({"openid": openid, "push": result.as_dict() if result else None})

    @app.post("/_control/token/invalidate")
    def c_invalidate() -> Response:
        st.invalidate_tokens()
        return jsonify({"ok": True})

    @app.post("/_control/token/expire")
    def c_expire() -> Response:
        st.expire_tokens()
        return jsonify({"ok": True})

    @app.post("/_control/faults")
    def c_faults() -> Response:
        body = _body()
        with st.lock:
            if "reject_tokens" in body:
                st.faults.reject_tokens = bool(body["reject_tokens"])
            if body.get("clear"):
                st.faults.fail_next.clear()
        st.add_fail_next(body.get("fail_next") or [])
        return jsonify(st.snapshot()["faults"])

    @app.post("/_control/clock/advance")
    def c_clock() -> Response:
        st.advance_clock(float(_body().get("seconds", 0)))
        return jsonify({"clock_offset": st.clock_offset, "now": st.now()})

    @app.post("/_control/push-target")
    def c_push_target() -> Any:
        body = _body()
        mode = body.get("mode", st.push_mode)
        if mode not in MODES:
            return jsonify({"error": f"mode must be one of {list(MODES)}"}), 400
        with st.lock:
            if "url" in body:
                st.push_target = body["url"] or None
            st.push_mode = mode
            if "timeout" in body:
                st.push_timeout = float(body["timeout"])
        return jsonify({"push_target": st.push_target, "push_mode": st.push_mode})

    @app.get("/_control/users")
    def c_users() -> Response:
        return jsonify(st.users_list())

    @app.post("/_control/users")
    def c_add_user() -> Response:
        body = _body()
        user = st.add_user(body.get("openid"), following=bool(body.get("following", True)),
                           nickname=str(body.get("nickname", "")), snapshot=bool(body.get("snapshot", False)),
                           last_interaction=st.now() if body.get("wrote_recently") else None)
        return jsonify(st.user_dict(user))

    @app.get("/_control/users/<openid>")
    def c_user(openid: str) -> Any:
        user = user_or_404(openid)
        return jsonify(st.user_dict(user)) if user else _not_found("user")

    @app.patch("/_control/users/<openid>")
    def c_patch_user(openid: str) -> Any:
        """Set following, snapshot, blocks_templates, last_message_at / last_message_ago."""
        user = user_or_404(openid)
        if user is None:
            return _not_found("user")
        body = _body()
        with st.lock:
            if "following" in body:
                (st.follow if body["following"] else st.unfollow)(openid)
            if "snapshot" in body:
                user.snapshot = bool(body["snapshot"])
            if "blocks_templates" in body:
                user.blocks_templates = bool(body["blocks_templates"])
            if "last_message_at" in body:
                at = body["last_message_at"]
                st.set_last_interaction(openid, None if at is None else float(at))
            if "last_message_ago" in body:
                st.set_last_interaction(openid, st.now() - float(body["last_message_ago"]))
        return jsonify(st.user_dict(user))

    @app.post("/_control/users/<openid>/follow")
    def c_follow(openid: str) -> Response:
        user = st.follow(openid)
        return jsonify(st.user_dict(user))

    @app.post("/_control/users/<openid>/unfollow")
    def c_unfollow(openid: str) -> Response:
        user = st.unfollow(openid)
        return jsonify(st.user_dict(user))

    @app.post("/_control/users/<openid>/send")
    def c_send(openid: str) -> Any:
        """Push what the user does: ``{"type": "text", "content": "开单 …"}``, ``{"type": "event", …}``."""
        if st.user(openid) is None:
            st.add_user(openid)
        try:
            result = st.user_message(openid, _body())
        except ValueError as exc:
            return jsonify({"error": str(exc)}), 400
        return jsonify({"openid": openid, "push": result.as_dict() if result else None})

    @app.route("/_control/oauth/login", methods=["GET", "POST"])
    def c_oauth_login() -> Any:
        """Choose the simulated user for the OAuth page (cookie), then go to ``next`` if given."""
        openid = request.values.get("openid", "")
        if not openid:
            return jsonify({"error": "openid required"}), 400
        if st.user(openid) is None:
            st.add_user(openid)
        nxt = request.values.get("next", "")
        resp: Response
        if nxt and urlsplit(nxt).scheme in ("http", "https", ""):
            resp = redirect(nxt, code=302)  # type: ignore[assignment]
        else:
            resp = jsonify({"openid": openid})
        resp.set_cookie("sandbox_openid", openid, path="/", httponly=True, samesite="Lax")
        return resp

    @app.post("/_control/oauth/logout")
    def c_oauth_logout() -> Response:
        resp = jsonify({"ok": True})
        resp.delete_cookie("sandbox_openid", path="/")
        return resp
