"""The ``/v3/…`` endpoints: verify the merchant's signature, apply API faults, answer signed JSON."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from cryptography import x509
from flask import Flask, Response, request

from .crypto import AuthError
from .errors import ApiError, now_cst, param_error, rfc3339
from .faults import alter
from .standin import StandIn

Handler = Callable[..., tuple[int, dict[str, Any] | None]]


def raw_url() -> str:
    """The request target exactly as received (what the merchant signed), relative to our mount point."""
    raw = str(request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or "")
    if raw.startswith("/"):
        root = request.script_root
        return raw[len(root) :] if root and raw.startswith(root) else raw
    query = request.environ.get("QUERY_STRING", "")
    return quote(request.path) + (f"?{query}" if query else "")


def json_body() -> dict[str, Any]:
    try:
        body = json.loads(request.get_data(cache=True) or b"null")
    except ValueError:
        raise param_error("请求体不是合法的JSON") from None
    if not isinstance(body, dict):
        raise param_error("请求体须为JSON对象")
    return body


def register_api(app: Flask, standin: StandIn) -> None:
    def endpoint(rule: str, methods: list[str]) -> Callable[[Handler], Handler]:
        def decorator(handler: Handler) -> Handler:
            def view(**kwargs: Any) -> Response:
                return _dispatch(standin, handler, kwargs)

            app.add_url_rule(rule, endpoint=handler.__name__, view_func=view, methods=methods)
            return handler

        return decorator

    store = standin.store

    def query_mchid() -> None:
        if request.args.get("mchid") != standin.credentials.mch_id:
            raise ApiError(
                400, "MCH_NOT_EXISTS" if request.args.get("mchid") else "PARAM_ERROR", "mchid错误或缺失"
            )

    @endpoint("/v3/pay/transactions/jsapi", ["POST"])
    def jsapi() -> tuple[int, dict[str, Any] | None]:
        return 200, store.create_order("JSAPI", json_body())

    @endpoint("/v3/pay/transactions/native", ["POST"])
    def native() -> tuple[int, dict[str, Any] | None]:
        return 200, store.create_order("NATIVE", json_body())

    @endpoint("/v3/pay/transactions/out-trade-no/<out_trade_no>", ["GET"])
    def query_by_out_trade_no(out_trade_no: str) -> tuple[int, dict[str, Any] | None]:
        query_mchid()
        return 200, store.order(out_trade_no).transaction()

    @endpoint("/v3/pay/transactions/id/<transaction_id>", ["GET"])
    def query_by_transaction_id(transaction_id: str) -> tuple[int, dict[str, Any] | None]:
        query_mchid()
        return 200, store.order_by_transaction_id(transaction_id).transaction()

    @endpoint("/v3/pay/transactions/out-trade-no/<out_trade_no>/close", ["POST"])
    def close(out_trade_no: str) -> tuple[int, dict[str, Any] | None]:
        body = json_body()
        if body.get("mchid") != standin.credentials.mch_id:
            raise ApiError(400, "MCH_NOT_EXISTS" if body.get("mchid") else "PARAM_ERROR", "mchid错误或缺失")
        store.close_order(out_trade_no)
        return 204, None

    @endpoint("/v3/refund/domestic/refunds", ["POST"])
    def refund() -> tuple[int, dict[str, Any] | None]:
        return 200, standin.create_refund(json_body()).view()

    @endpoint("/v3/refund/domestic/refunds/<out_refund_no>", ["GET"])
    def query_refund(out_refund_no: str) -> tuple[int, dict[str, Any] | None]:
        return 200, store.refund(out_refund_no).view()

    @endpoint("/v3/bill/tradebill", ["GET"])
    def tradebill() -> tuple[int, dict[str, Any] | None]:
        args = request.args
        hash_value, token = standin.prepare_bill(
            args.get("bill_date"), args.get("bill_type", "ALL"), args.get("tar_type")
        )
        base = request.host_url.rstrip("/") + request.script_root
        return 200, {
            "hash_type": "SHA1",
            "hash_value": hash_value,
            "download_url": f"{base}/v3/billdownload/file?token={token}",
        }

    @endpoint("/v3/certificates", ["GET"])
    def certificates() -> tuple[int, dict[str, Any] | None]:
        cert = standin.crypto.platform_cert_pem
        parsed = x509.load_pem_x509_certificate(cert.encode())
        return 200, {
            "data": [
                {
                    "serial_no": standin.credentials.platform_cert_serial_no,
                    "effective_time": rfc3339(parsed.not_valid_before_utc),
                    "expire_time": rfc3339(parsed.not_valid_after_utc),
                    "encrypt_certificate": standin.crypto.encrypt(cert, "certificate"),
                }
            ]
        }

    @app.get("/v3/billdownload/file")
    def bill_download() -> Response:
        # Signed request, UNSIGNED response (WeChat does not sign file downloads).
        started = now_cst()
        try:
            standin.crypto.verify_request("GET", raw_url(), "", request.headers.get("Authorization"))
            payload = standin.bill_file(request.args.get("token", ""))
        except AuthError as exc:
            return _log(standin, started, _error_response(standin, ApiError(401, "SIGN_ERROR", str(exc))))
        except ApiError as exc:
            return _log(standin, started, _error_response(standin, exc))
        response = Response(payload, status=200, content_type="application/octet-stream")
        response.headers["Request-ID"] = _request_id()
        return _log(standin, started, response)


def _request_id() -> str:
    return uuid.uuid4().hex.upper()


def _dispatch(standin: StandIn, handler: Handler, kwargs: dict[str, Any]) -> Response:
    started = now_cst()
    body = request.get_data(cache=True).decode("utf-8", "replace")
    fault = None
    try:
        try:
            standin.crypto.verify_request(
                request.method, raw_url(), body, request.headers.get("Authorization")
            )
        except AuthError as exc:
            raise ApiError(401, "SIGN_ERROR", str(exc)) from None
        fault = standin.api_faults.take(request.path)
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.seconds)
        if fault is not None and fault.kind.startswith("error") and not fault.after:
            raise fault.error()
        status, payload = handler(**kwargs)
        if fault is not None and fault.kind.startswith("error"):
            raise fault.error()  # processed, yet the merchant sees an error: an ambiguous outcome
        response = _signed(standin, status, payload, altered=fault is not None and fault.kind == "altered")
    except ApiError as exc:
        response = _error_response(standin, exc)
    return _log(standin, started, response)


def _signed(
    standin: StandIn, status: int, payload: dict[str, Any] | None, *, altered: bool = False
) -> Response:
    text = "" if payload is None else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    headers = standin.crypto.signature_headers(text, standin.serial)
    if altered:
        if text:
            text = alter(text)
        else:  # an empty 204 body cannot change; the signed timestamp can
            headers["Wechatpay-Timestamp"] = str(int(headers["Wechatpay-Timestamp"]) + 1)
    response = Response(text or None, status=status)
    if text:
        response.headers["Content-Type"] = "application/json; charset=utf-8"
    response.headers.update(headers)
    response.headers["Request-ID"] = _request_id()
    return response


def _error_response(standin: StandIn, error: ApiError) -> Response:
    return _signed(standin, error.status, error.body())


def _log(standin: StandIn, started: Any, response: Response) -> Response:
    body: Any = None
    raw = request.get_data(cache=True)
    if raw:
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")[:2000]
    answer = None
    if response.mimetype == "application/json":
        answer = json.loads(response.get_data())
    standin.log_request(
        {
            "at": rfc3339(started),
            "method": request.method,
            "path": raw_url(),
            "body": body,
            "status": response.status_code,
            "code": answer.get("code") if isinstance(answer, dict) else None,
            "request_id": response.headers.get("Request-ID"),
        }
    )
    return response
