"""The OpenAPI 3.1 document of ``/api/v1``, built from the same request specs the API validates with."""

from __future__ import annotations

from typing import Any

from erp_sync import api_schema
from payments.models import BillStatus, PaymentMethod, RefundKind, RefundStatus

_STR = {"type": "string"}
_NSTR = {"type": ["string", "null"]}
_INT = {"type": "integer"}


def _closed(properties: dict[str, Any]) -> dict[str, Any]:
    required = list(properties)
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


PAYMENT = _closed({
    "receipt_no": _STR, "method": {"type": "string", "enum": [str(m) for m in PaymentMethod]},
    "amount_fen": _INT, "applied_fen": _INT, "transaction_id": _NSTR, "out_trade_no": _NSTR,
    "paid_at": {"type": "string", "format": "date-time"}, "note": _NSTR,
})
REFUND = _closed({
    "out_refund_no": _STR, "request_no": _STR,
    "kind": {"type": "string", "enum": [str(k) for k in RefundKind]},
    "amount_fen": _INT, "reason": _STR, "status": {"type": "string", "enum": [str(s) for s in RefundStatus]},
    "receipt_no": _STR, "transaction_id": _NSTR, "created_at": {"type": "string", "format": "date-time"},
})
BILL = _closed({
    "number": _STR, "erp_ref": _NSTR, "status": {"type": "string", "enum": [str(s) for s in BillStatus]},
    "amount_fen": _INT, "paid_fen": _INT, "refunded_fen": _INT, "outstanding_fen": _INT, "seq": _INT,
    "pay_url": {"type": "string", "format": "uri"},
    "payments": {"type": "array", "items": {"$ref": "#/components/schemas/Payment"}},
    "refunds": {"type": "array", "items": {"$ref": "#/components/schemas/Refund"}},
})
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": _STR, "message": _STR,
            "fields": {"type": "object", "additionalProperties": _STR,
                       "description": "Per-field problems (422), keyed by dotted path"},
        },
    }},
}
_ERRORS = {
    "400": "Malformed JSON", "401": "Missing or wrong bearer key, or ERP_API_KEY not configured",
    "404": "No such bill", "409": "Conflict: idempotency key reused with other content, or state",
    "413": "Body too large", "422": "Validation failed or a business rule refused it",
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _responses(ok: dict[str, str], errors: tuple[str, ...]) -> dict[str, Any]:
    bill = {"$ref": "#/components/schemas/Bill"}
    error = {"$ref": "#/components/schemas/Error"}
    out = {code: _json(bill, text) for code, text in ok.items()}
    out.update({code: _json(error, _ERRORS[code]) for code in errors})
    return out


def _body(spec: api_schema.F, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": api_schema.json_schema(spec)}}}


_NUMBER = [{"name": "number", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "Bill number, e.g. B2611-0042"}]


def openapi_document(max_bill_fen: int) -> dict[str, Any]:
    writes = ("400", "401", "404", "409", "413", "422")
    return {
        "openapi": "3.1.0",
        "info": {"title": "RenoPay ERP API", "version": "1.0.0",
                 "description": "Bills for the ERP. Money is integer fen. "
                                "Errors: {error: {code, message, fields?}}."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": {
            "/bills": {"post": {
                "operationId": "createBill", "summary": "Create an open bill (idempotent on erp_ref)",
                "requestBody": _body(api_schema.bill_create(max_bill_fen)),
                "responses": _responses({"201": "Created", "200": "Same request repeated"},
                                        ("400", "401", "409", "413", "422")),
            }},
            "/bills/{number}": {"get": {
                "operationId": "getBill", "summary": "A bill with its payments and refunds",
                "parameters": _NUMBER, "responses": _responses({"200": "The bill"}, ("401", "404")),
            }},
            "/bills/{number}/void": {"post": {
                "operationId": "voidBill", "summary": "Void an open bill with nothing paid (repeat-safe)",
                "parameters": _NUMBER, "requestBody": _body(api_schema.VOID, required=False),
                "responses": _responses({"200": "Voided"}, writes),
            }},
            "/bills/{number}/refunds": {"post": {
                "operationId": "refundBill", "summary": "Request a refund (idempotent on out_refund_no)",
                "parameters": _NUMBER, "requestBody": _body(api_schema.REFUND_CREATE),
                "responses": _responses({"201": "Refund requested", "200": "Same request repeated"}, writes),
            }},
            "/openapi.json": {"get": {
                "operationId": "openapi", "summary": "This document", "security": [],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document")},
            }},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "ERP_API_KEY"}},
            "schemas": {"Bill": BILL, "Payment": PAYMENT, "Refund": REFUND, "Error": ERROR},
        },
    }
