"""Template ids and field mapping (``settings.templates``), and the value rules of category templates.

Configuration, per notice kind (docs/notices.md)::

    [templates.payment_succeeded]
    template_id = "…"
    fields = { thing1 = "bill_title", amount2 = "amount", character_string3 = "receipt_no", time4 = "time" }

A field key's type is its name without the digits (``thing1`` → ``thing``); its value names a
*source* (below). The mapping is checked when the app starts (unknown kind or source, an amount key
fed from a text source…), and every value is normalised to its type's rule before sending, so WeChat
never answers 47003 for our data: ``thing`` ≤ 20 characters, ``character_string`` ≤ 32 ASCII,
``amount`` ``38000.00元``, ``time`` ``2026-11-26 10:00``, ``phrase`` ≤ 5 Chinese characters.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from db import CHINA_TZ

AMOUNT_SOURCES = frozenset({"amount", "outstanding", "bill_amount"})
TIME_SOURCES = frozenset({"time", "paid_at", "due_date"})
TEXT_SOURCES = frozenset({
    "bill_number", "bill_title", "stage", "contract_no", "customer_name", "receipt_no", "transaction_id",
    "reason", "result", "summary", "company_name",
})
SOURCES = AMOUNT_SOURCES | TIME_SOURCES | TEXT_SOURCES

_CUSTOMER_PAY = {"character_string1": "bill_number", "amount2": "outstanding", "thing3": "bill_title",
                 "time4": "due_date"}
DEFAULT_FIELDS: dict[str, dict[str, str]] = {
    "bill_opened": _CUSTOMER_PAY,
    "bill_reminded": _CUSTOMER_PAY,
    "payment_succeeded": {"thing1": "bill_title", "amount2": "amount", "character_string3": "receipt_no",
                          "time4": "time"},
    "payment_failed": {"character_string1": "bill_number", "amount2": "amount", "thing3": "bill_title",
                       "phrase4": "result", "time5": "time"},
    "refund_succeeded": {"character_string1": "receipt_no", "amount2": "amount", "thing3": "reason",
                         "time4": "time"},
    "refund_failed": {"character_string1": "receipt_no", "amount2": "amount", "thing3": "reason",
                      "phrase4": "result", "time5": "time"},
    "staff_payment": {"thing1": "customer_name", "amount2": "amount", "character_string3": "bill_number",
                      "time4": "time"},
    "staff_anomaly": {"thing1": "summary", "amount2": "amount", "character_string3": "bill_number",
                      "time4": "time"},
    "staff_refund_problem": {"thing1": "summary", "amount2": "amount", "character_string3": "receipt_no",
                             "time4": "time"},
    "staff_dead_letter": {"thing1": "summary", "character_string2": "bill_number", "time3": "time"},
    "staff_reconciliation": {"thing1": "summary", "amount2": "amount", "time3": "time"},
}
KINDS = frozenset(DEFAULT_FIELDS)

_KEY = re.compile(r"^([a-z_]+?)(\d+)$")
_HAN = re.compile(r"[\u4e00-\u9fff]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
EMPTY = "-"
MAX_AMOUNT_FEN = 10**14 - 1


class TemplateConfigError(ValueError):
    """``settings.templates`` names an unknown kind or source, or feeds a field from the wrong type."""


@dataclass(frozen=True)
class Template:
    kind: str
    template_id: str
    fields: Mapping[str, str]  # WeChat key → source name


def key_type(key: str) -> str | None:
    m = _KEY.match(key)
    return m.group(1) if m else None


def load(templates: Mapping[str, Any], *, sandbox: bool) -> dict[str, Template]:
    """The templates by kind: configured ones, plus (in sandbox mode) ``sandbox_<kind>`` for the rest.

    A kind with no template (production, not configured) is sent as a customer-service message when
    the 48-hour window allows."""
    problems: list[str] = []
    found: dict[str, Template] = {}
    for kind, entry in templates.items():
        if kind not in KINDS:
            problems.append(f"templates.{kind}: unknown notice kind (known: {', '.join(sorted(KINDS))})")
            continue
        if not isinstance(entry, Mapping) or not str(entry.get("template_id") or "").strip():
            problems.append(f"templates.{kind}: template_id is required")
            continue
        fields = dict(entry.get("fields") or DEFAULT_FIELDS[kind])
        problems += [f"templates.{kind}.fields.{key}: {p}" for key, src in fields.items()
                     if (p := field_problem(key, src))]
        found[kind] = Template(kind, str(entry["template_id"]).strip(), fields)
    if problems:
        raise TemplateConfigError("; ".join(problems))
    if sandbox:
        for kind in KINDS - found.keys():
            found[kind] = Template(kind, f"sandbox_{kind}", DEFAULT_FIELDS[kind])
    return found


def field_problem(key: str, source: object) -> str | None:
    kind = key_type(key)
    if kind is None and key not in ("first", "remark"):
        return "a key looks like thing1 / amount2 / character_string3 / time4"
    if not isinstance(source, str) or source not in SOURCES:
        return f"unknown source {source!r} (known: {', '.join(sorted(SOURCES))})"
    if kind == "amount" and source not in AMOUNT_SOURCES:
        return f"an amount key needs one of {sorted(AMOUNT_SOURCES)}"
    if kind == "time" and source not in TIME_SOURCES:
        return f"a time key needs one of {sorted(TIME_SOURCES)}"
    if source in AMOUNT_SOURCES and kind not in ("amount", "thing", "character_string"):
        return f"an amount source cannot fill a {kind} key"
    return None


# ------------------------------------------------------------------------------------ values


def render(template: Template, values: Mapping[str, object]) -> dict[str, str]:
    """The template's data, every value normalised to its key's rule."""
    rendered = {}
    for key, source in template.fields.items():
        value = values.get(source)
        if source in AMOUNT_SOURCES and key_type(key) != "amount":
            value = amount(value)  # a thing/character_string key shows the amount as text
        rendered[key] = normalise(key, value)
    return rendered


def normalise(key: str, value: object) -> str:
    kind = key_type(key)
    match kind:
        case "amount":
            return amount(value)
        case "time":
            return time_text(value)
        case "character_string":
            return character_string(value)
        case "phrase":
            return phrase(value)
        case "number":
            digits = re.sub(r"[^0-9]", "", text(value))[:32]
            return digits or "0"
        case _ if kind is not None:
            return thing(value)
    return clip(text(value), 200)


def text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime | dt.date):
        return time_text(value)
    clean = _CONTROL.sub(" ", unicodedata.normalize("NFKC", str(value)))
    # WeChat (and the stand-in) refuse unprintable code points: unassigned, private use, separators.
    return " ".join("".join(ch if ch.isprintable() else " " for ch in clean).split())


def clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


def thing(value: object) -> str:
    return clip(text(value), 20) or EMPTY


def character_string(value: object) -> str:
    ascii_only = "".join(ch for ch in text(value) if "\x21" <= ch <= "\x7e")
    return ascii_only[:32] or EMPTY


def phrase(value: object) -> str:
    return "".join(_HAN.findall(text(value)))[:5] or "通知"


def amount(value: object) -> str:
    """Fen (int) → ``38000.00元`` (no thousands separator: WeChat's own examples don't use one)."""
    fen = value if isinstance(value, int) and not isinstance(value, bool) else 0
    fen = min(abs(fen), MAX_AMOUNT_FEN)  # WeChat takes ≤ 12 integer digits; bills are far below that
    yuan, cents = divmod(fen, 100)
    return f"{yuan}.{cents:02d}元"


def time_text(value: object) -> str:
    """``2026-11-26 10:00`` (China time) for a moment, ``2026-12-10`` for a date."""
    if isinstance(value, str):
        value = parse_time(value)
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return moment.astimezone(CHINA_TZ).strftime("%Y-%m-%d %H:%M")
    if isinstance(value, dt.date):
        return value.isoformat()
    return dt.datetime.now(CHINA_TZ).strftime("%Y-%m-%d %H:%M")


def parse_time(value: str) -> dt.datetime | dt.date | None:
    try:
        if "T" in value or " " in value:
            return dt.datetime.fromisoformat(value)
        return dt.date.fromisoformat(value)
    except ValueError:
        return None
