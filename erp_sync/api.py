"""The inbound ERP API ``/api/v1``: create, read and void bills, request refunds.

Errors are answered in one place (``_error``): ``{"error": {"code", "message", "fields"?}}`` with
400 (malformed JSON), 401 (bearer key), 404, 405, 409 (conflicts, idempotency), 413, 422 (validation
and domain rules). Bad input never reaches a 500.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from config import current_settings
from db import current_db
from erp_sync import api_schema
from erp_sync.api_schema import ValidationFailed
from erp_sync.openapi import openapi_document
from payments import services
from payments.errors import DomainError, IdempotencyConflict
from payments.models import Bill, BillSource, BillStatus, Refund

PREFIX = "/api/v1"
bp = Blueprint("erp_api", __name__, url_prefix=PREFIX)
_BILL_NUMBER = re.compile(r"^[A-Za-z0-9 -]{1,32}$")
DEFAULT_VOID_REASON = "ERP 作废"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: dict[str, str] | None = None):
        self.status, self.code, self.message, self.fields = status, code, message, fields
        super().__init__(message)


def _error(status: int, code: str, message: str, fields: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields is not None:
        body["fields"] = fields
    response = jsonify(error=body)
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="renopay-erp"'
    return response


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    return _error(exc.status, exc.code, exc.message, exc.fields)


@bp.errorhandler(ValidationFailed)
def _validation_error(exc: ValidationFailed) -> Response:
    return _error(422, "validation_failed", "请求内容不符合要求", exc.fields)


@bp.errorhandler(DomainError)
def _domain_error(exc: DomainError) -> Response:
    return _error(exc.http_status, exc.code, exc.message)


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Response | HTTPException:
    """App-level: routing errors (404/405) and body limits (413) under /api/v1 answer JSON too."""
    if not request.path.startswith(PREFIX + "/") and request.path != PREFIX:
        return exc
    code = (exc.name or "error").lower().replace(" ", "_")
    return _error(exc.code or 500, code, exc.description or exc.name or "error")


@bp.before_request
def _authenticate() -> None:
    if request.endpoint == "erp_api.openapi":
        return
    key = current_settings().erp_api_key
    if not key:
        raise ApiError(401, "api_disabled", "ERP 接口未启用：服务器没有配置 ERP_API_KEY")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise ApiError(401, "unauthorized", "缺少或错误的 API 密钥（Authorization: Bearer <ERP_API_KEY>）")


def _json_body(*, optional: bool = False) -> Any:
    raw = request.get_data(cache=True)
    if optional and not raw.strip():
        return {}
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ApiError(400, "malformed_json", "请求体不是有效的 JSON") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def bill_body(bill: Bill) -> dict[str, Any]:
    """The bill of the contract, with its payments and refunds."""
    links = current_app.extensions["renopay.links"]
    return {
        "number": bill.number,
        "erp_ref": bill.erp_ref,
        "status": str(bill.status),
        "amount_fen": bill.amount_fen,
        "paid_fen": bill.paid_fen,
        "refunded_fen": bill.refunded_fen,
        "outstanding_fen": bill.outstanding_fen,
        "seq": bill.seq,
        "pay_url": links.pay_url(bill.number),
        "payments": [services.payment_view(p, p.attempt) for p in bill.payments],
        "refunds": [services.refund_view(r) for r in bill.refunds],
    }


def _find_bill(session: Session, number: str, *, lock: bool = False) -> Bill:
    if not _BILL_NUMBER.fullmatch(number):
        raise ApiError(404, "bill_not_found", "没有找到这张账单，请核对账单编号")
    return services.get_bill_by_number(session, number, lock=lock)


def _digest(data: dict[str, Any]) -> str:
    canonical = json.dumps(data, ensure_ascii=False, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@bp.post("/bills")
def create_bill() -> tuple[Response, int]:
    settings = current_settings()
    data = api_schema.validate(api_schema.bill_create(settings.max_bill_fen), _json_body())
    data.setdefault("stage", None)
    data["stage"] = data["stage"] or "其他"
    digest = _digest(data)
    for _ in range(2):  # a concurrent twin may win the unique erp_ref: then answer as a repeat
        try:
            with current_db().transaction() as session:
                return _create_or_repeat(session, data, digest, settings.max_bill_fen)
        except IntegrityError:
            continue
    raise ApiError(409, "conflict", "并发请求冲突，请重试")


def _create_or_repeat(
    session: Session, data: dict[str, Any], digest: str, max_fen: int
) -> tuple[Response, int]:
    existing = session.execute(select(Bill).where(Bill.erp_ref == data["erp_ref"])).scalar_one_or_none()
    if existing is not None:
        if existing.request_hash != digest:
            raise IdempotencyConflict(f"erp_ref {data['erp_ref']} 已用于内容不同的账单 {existing.number}")
        return jsonify(bill_body(existing)), 200
    who = data["customer"]
    customer = services.find_or_create_customer(
        session, name=who["name"], phone=who["phone"], erp_ref=who.get("erp_ref")
    )
    bill = services.issue_bill(
        session, customer=customer, amount_fen=data["amount_fen"], title=data["title"], stage=data["stage"],
        source=BillSource.erp, max_fen=max_fen, contract_no=data.get("contract_no"),
        due_date=data.get("due_date"), erp_ref=data["erp_ref"], request_hash=digest, open_now=True,
    )
    session.flush()
    return jsonify(bill_body(bill)), 201


# merge_slashes=False: a number with a "/" in it (…/bills/%2F0) is an unknown bill (404), not a 308
# redirect to another bill's address
@bp.get("/bills/<string:number>", merge_slashes=False)
def get_bill(number: str) -> Response:
    with current_db().transaction() as session:
        return jsonify(bill_body(_find_bill(session, number)))


@bp.post("/bills/<string:number>/void", merge_slashes=False)
def void(number: str) -> Response:
    data = api_schema.validate(api_schema.VOID, _json_body(optional=True))
    with current_db().transaction() as session:
        bill = _find_bill(session, number, lock=True)
        if bill.status is not BillStatus.void:  # voiding twice is a repeat, not a conflict
            bill = services.void_bill(session, bill.id, reason=data.get("reason") or DEFAULT_VOID_REASON)
        return jsonify(bill_body(bill))


@bp.post("/bills/<string:number>/refunds", merge_slashes=False)
def refund(number: str) -> tuple[Response, int]:
    data = api_schema.validate(api_schema.REFUND_CREATE, _json_body())
    for _ in range(2):
        try:
            with current_db().transaction() as session:
                bill = _find_bill(session, number)
                repeat = session.execute(
                    select(Refund.id).where(Refund.request_no == data["out_refund_no"]).limit(1)
                ).first() is not None
                services.request_refund(
                    session, bill_id=bill.id, amount_fen=data["amount_fen"], reason=data["reason"],
                    request_no=data["out_refund_no"], source="erp",
                )
                session.flush()
                session.refresh(bill)
                return jsonify(bill_body(bill)), 200 if repeat else 201
        except IntegrityError:
            continue
    raise ApiError(409, "conflict", "并发请求冲突，请重试")


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document(current_settings().max_bill_fen))


def init_api(app: Flask) -> None:
    app.register_blueprint(bp)
    for code in (404, 405):
        app.register_error_handler(code, http_error)
