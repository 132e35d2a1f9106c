"""``/_control/…``: a JSON API over :class:`StandIn` for tests and the simulator (sandbox only, no auth)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import Blueprint, Flask, jsonify, request
from flask.typing import ResponseReturnValue

from .errors import ApiError
from .standin import StandIn


def _args() -> dict[str, Any]:
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else {}


def _pick(body: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: body[name] for name in names if name in body}


def register_control(app: Flask, standin: StandIn) -> None:
    bp = Blueprint("wechatpay_control", __name__, url_prefix="/_control")

    @bp.errorhandler(ApiError)
    def api_error(exc: ApiError) -> ResponseReturnValue:
        return jsonify(exc.body()), exc.status

    @bp.errorhandler(ValueError)
    @bp.errorhandler(TypeError)
    def bad_request(exc: Exception) -> ResponseReturnValue:
        return jsonify({"code": "BAD_CONTROL_REQUEST", "message": str(exc)}), 400

    @bp.post("/reset")
    def reset() -> ResponseReturnValue:
        standin.reset()
        return jsonify({"ok": True})

    @bp.get("/config")
    def get_config() -> ResponseReturnValue:
        return jsonify(
            {
                "mode": standin.mode,
                "serial": standin.serial,
                "retry_scale": standin.notifier.retry_scale,
                "notify_timeout": standin.notifier.timeout,
                **asdict(standin.settings),
            }
        )

    @bp.post("/config")
    def set_config() -> ResponseReturnValue:
        body = _args()
        if "mode" in body:
            standin.set_mode(body["mode"])
        if "retry_scale" in body:
            standin.notifier.retry_scale = float(body["retry_scale"])
        if "notify_timeout" in body:
            standin.notifier.timeout = float(body["notify_timeout"])
        if "bill_url_ttl" in body:
            standin.settings.bill_url_ttl = float(body["bill_url_ttl"])
        return get_config()

    @bp.post("/mode")
    def set_mode() -> ResponseReturnValue:
        standin.set_mode(_args().get("mode", ""))
        return jsonify({"mode": standin.mode, "serial": standin.serial})

    # -- orders ------------------------------------------------------------------------------------
    @bp.get("/orders")
    def orders() -> ResponseReturnValue:
        return jsonify(standin.orders())

    @bp.get("/orders/<out_trade_no>")
    def order(out_trade_no: str) -> ResponseReturnValue:
        return jsonify(standin.order(out_trade_no))

    @bp.post("/orders/<out_trade_no>/pay")
    def pay(out_trade_no: str) -> ResponseReturnValue:
        body = _args()
        return jsonify(
            standin.pay(
                out_trade_no, **_pick(body, "amount", "payer_total", "openid", "bank_type", "force", "notify")
            )
        )

    @bp.post("/orders/<out_trade_no>/close")
    def close(out_trade_no: str) -> ResponseReturnValue:
        return jsonify(standin.close(out_trade_no))

    @bp.post("/orders/<out_trade_no>/expire")
    def expire(out_trade_no: str) -> ResponseReturnValue:
        return jsonify(standin.expire(out_trade_no))

    # -- refunds -----------------------------------------------------------------------------------
    @bp.get("/refunds")
    def refunds() -> ResponseReturnValue:
        return jsonify(standin.refunds())

    @bp.post("/refunds/outcome")
    def refund_outcome() -> ResponseReturnValue:
        standin.set_refund_outcome(**_pick(_args(), "status", "out_refund_no", "delay"))
        return jsonify({"ok": True})

    @bp.post("/refunds/<out_refund_no>/resolve")
    def resolve_refund(out_refund_no: str) -> ResponseReturnValue:
        return jsonify(standin.resolve_refund(out_refund_no, _args().get("status", "SUCCESS")))

    # -- notifications -----------------------------------------------------------------------------
    @bp.get("/notifications")
    def notifications() -> ResponseReturnValue:
        return jsonify(standin.notifications())

    @bp.get("/deliveries")
    def deliveries() -> ResponseReturnValue:
        return jsonify(standin.deliveries())

    @bp.post("/faults/notifications")
    def notification_faults() -> ResponseReturnValue:
        faults = standin.notifier.set_faults(
            **_pick(_args(), "delay", "duplicate", "concurrent", "out_of_order", "lost", "signtest", "count")
        )
        return jsonify(asdict(faults))

    @bp.delete("/faults/notifications")
    def clear_notification_faults() -> ResponseReturnValue:
        return jsonify(asdict(standin.notifier.set_faults()))

    @bp.post("/notifications/release")
    def release() -> ResponseReturnValue:
        return jsonify({"released": standin.notifier.release()})

    @bp.post("/notifications/signtest")
    def signtest() -> ResponseReturnValue:
        return jsonify(standin.signtest(**_pick(_args(), "url", "out_trade_no")))

    # -- API faults --------------------------------------------------------------------------------
    @bp.get("/faults/api")
    def api_faults() -> ResponseReturnValue:
        return jsonify(standin.api_faults.snapshot())

    @bp.post("/faults/api")
    def add_api_fault() -> ResponseReturnValue:
        rule = standin.api_faults.add(**_pick(_args(), "kind", "count", "path_prefix", "seconds", "after"))
        return jsonify(asdict(rule))

    @bp.delete("/faults/api")
    def clear_api_faults() -> ResponseReturnValue:
        standin.api_faults.clear()
        return jsonify([])

    # -- bills, ledger, logs -----------------------------------------------------------------------
    @bp.get("/bill/injections")
    def bill_injections() -> ResponseReturnValue:
        with standin.bill_injections.lock:
            return jsonify(standin.bill_injections.by_date)

    @bp.post("/bill/injections")
    def add_bill_injection() -> ResponseReturnValue:
        body = dict(_args())
        date, kind = body.pop("date", ""), body.pop("kind", "")
        return jsonify(standin.bill_injections.add(date, kind, **body))

    @bp.delete("/bill/injections")
    def clear_bill_injections() -> ResponseReturnValue:
        standin.bill_injections.clear()
        return jsonify({})

    @bp.get("/bill/<bill_date>")
    def bill(bill_date: str) -> ResponseReturnValue:
        text = standin.trade_bill(bill_date, request.args.get("bill_type", "ALL"))
        return (text or "", 200 if text else 404, {"Content-Type": "text/csv; charset=utf-8"})

    @bp.get("/ledger")
    def ledger() -> ResponseReturnValue:
        return jsonify(standin.ledger())

    @bp.get("/requests")
    def received() -> ResponseReturnValue:
        return jsonify(standin.received())

    app.register_blueprint(bp)
