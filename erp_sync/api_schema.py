"""Request shapes of the inbound ERP API, declared once and used twice: to validate requests
(strictly: unknown fields, wrong types and out-of-range values are 422 with per-field messages) and
to render the JSON Schemas of ``/api/v1/openapi.json`` — so the document cannot drift from the code.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from payments.models import STAGES

# PostgreSQL text holds neither NUL nor lone surrogates (which JSON "\ud800" escapes can produce).
_NO_CONTROL = r"^[^\u0000-\u001f\u007f\ud800-\udfff]+$"


@dataclass(frozen=True)
class F:
    """One field: a JSON type and its limits."""

    kind: str  # string | integer | date | object
    required: bool = False
    nullable: bool = False
    min_length: int = 1
    max_length: int = 64
    pattern: str | None = _NO_CONTROL
    minimum: int | None = None
    maximum: int | None = None
    enum: tuple[str, ...] | None = None
    fields: Mapping[str, F] = field(default_factory=dict)
    description: str = ""


def bill_create(max_bill_fen: int) -> F:
    return F("object", fields={
        "erp_ref": F("string", required=True, description="The ERP's id of this receivable; idempotency key"),
        "amount_fen": F("integer", required=True, minimum=1, maximum=max_bill_fen, description="In fen"),
        "title": F("string", required=True, max_length=100),
        "customer": F("object", required=True, fields={
            "name": F("string", required=True),
            "phone": F("string", required=True, min_length=5, max_length=20, pattern=r"^\+?[0-9][0-9 -]*$"),
            "erp_ref": F("string", nullable=True),
        }),
        "contract_no": F("string", nullable=True),
        "stage": F("string", nullable=True, enum=STAGES, description="Default 其他"),
        "due_date": F("date", nullable=True),
    })


REFUND_CREATE = F("object", fields={
    "out_refund_no": F("string", required=True, max_length=60, pattern=r"^[0-9A-Za-z_|*@-]+$",
                       description="The ERP's refund number; idempotency key"),
    "amount_fen": F("integer", required=True, minimum=1, maximum=10**12),
    "reason": F("string", required=True, max_length=80),
})

VOID = F("object", fields={"reason": F("string", max_length=200, description="Default: ERP 作废")})


class ValidationFailed(Exception):
    def __init__(self, fields: dict[str, str]):
        self.fields = fields
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))


def validate(spec: F, data: Any) -> dict[str, Any]:
    """Return the cleaned object (dates parsed) or raise ValidationFailed with every problem."""
    errors: dict[str, str] = {}
    cleaned = _object(spec, data, "", errors)
    if errors:
        raise ValidationFailed(errors)
    return cleaned


def _object(spec: F, data: Any, path: str, errors: dict[str, str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        errors[path or "body"] = "必须是 JSON 对象"
        return {}
    for key in data:
        if key not in spec.fields:
            errors[f"{path}{key}"] = "不支持的字段"
    cleaned: dict[str, Any] = {}
    for name, sub in spec.fields.items():
        where = f"{path}{name}"
        if name not in data:
            if sub.required:
                errors[where] = "必填"
            continue
        value = data[name]
        if value is None:
            if not sub.nullable:
                errors[where] = "必填" if sub.required else "不能为 null"
            cleaned[name] = None
            continue
        problem, result = _value(sub, value, where, errors)
        if problem:
            errors[where] = problem
        else:
            cleaned[name] = result
    return cleaned


def _value(spec: F, value: Any, where: str, errors: dict[str, str]) -> tuple[str | None, Any]:
    if spec.kind == "object":
        return None, _object(spec, value, where + ".", errors)
    if spec.kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            return "必须是整数（单位：分）", None
        if spec.minimum is not None and value < spec.minimum:
            return f"不能小于 {spec.minimum}", None
        if spec.maximum is not None and value > spec.maximum:
            return f"不能大于 {spec.maximum}", None
        return None, value
    if not isinstance(value, str):
        return "必须是字符串", None
    if spec.kind == "date":
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return "日期格式应为 YYYY-MM-DD", None
        try:
            return None, dt.date.fromisoformat(value)
        except ValueError:
            return "不是有效的日期", None
    return _string(spec, value), value


def _string(spec: F, value: str) -> str | None:
    if not spec.min_length <= len(value) <= spec.max_length:
        return f"长度应为 {spec.min_length}–{spec.max_length} 个字符"
    if spec.enum is not None and value not in spec.enum:
        return f"只能是：{'、'.join(spec.enum)}"
    if spec.pattern and not re.fullmatch(spec.pattern, value):
        return "包含不允许的字符"
    return None


def json_schema(spec: F) -> dict[str, Any]:
    """The JSON Schema (2020-12, as OpenAPI 3.1 uses) of a field spec."""
    schema: dict[str, Any]
    if spec.kind == "object":
        schema = {
            "type": "object",
            "properties": {name: json_schema(sub) for name, sub in spec.fields.items()},
            "required": [name for name, sub in spec.fields.items() if sub.required],
            "additionalProperties": False,
        }
    elif spec.kind == "integer":
        schema = {"type": "integer"}
        if spec.minimum is not None:
            schema["minimum"] = spec.minimum
        if spec.maximum is not None:
            schema["maximum"] = spec.maximum
    elif spec.kind == "date":
        schema = {"type": "string", "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$"}
    else:
        schema = {"type": "string", "minLength": spec.min_length, "maxLength": spec.max_length}
        if spec.enum is not None:
            schema = {"type": "string", "enum": list(spec.enum)}
        elif spec.pattern:
            schema["pattern"] = spec.pattern
    if spec.nullable:
        schema["type"] = [schema["type"], "null"]
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
    if spec.description:
        schema["description"] = spec.description
    return schema
