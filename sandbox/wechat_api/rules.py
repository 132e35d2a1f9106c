"""Category-template (类目模板) value rules; a value that breaks its key's rule gets errcode 47003.

The key's type is its name without the trailing digits (``thing1`` → ``thing``). Rules follow the
Official Account documentation for subscription/category templates:

| type | rule |
|---|---|
| thing | 1–20 characters, anything printable |
| character_string | 1–32 ASCII letters, digits or symbols (no spaces) |
| amount | optional ``¥``/``￥``, ≤ 12 integer digits (``,`` thousands groups allowed), up to 2
  decimals, optional trailing ``元``: ``38000.00元``, ``¥38,000.00``, ``38000`` |
| time | ``2026-11-26 10:00[:00]``, ``2026年11月26日 10:00``, a bare date in either form, or ``10:00``;
  a range joins two with ``~`` |
| phrase | 1–5 Chinese characters |
| number | 1–32 digits, optionally with decimals |
| letter | 1–32 ASCII letters |
| symbol | 1–5 symbols (no letters, digits or spaces) |
| car_number | ≤ 8: a Chinese character may open and close it, letters/digits in between |
| name | 1–10 Chinese characters, or 1–20 letters/symbols |
| phone_number | 1–17 digits and ``+ - ( )`` / spaces |

Keys with other names (``first``, ``keyword1``, ``remark``, ``const1``…) are not checked (old-style templates;
``first``/``remark`` are ignored by WeChat since 2023-05).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

_HAN = r"\u4e00-\u9fff"
_KEY = re.compile(r"^([a-z_]+?)(\d+)$")
_AMOUNT = re.compile(r"^[¥￥]?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?:\.\d{1,2})?元?$")
_ASCII_SYMBOLIC = re.compile(r"^[\x21-\x7e]+$")


def _is_time_point(text: str) -> bool:
    text = text.strip()
    formats = ("%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d", "%Y年%m月%d日 %H:%M", "%Y年%m月%d日",
               "%Y年%m月%d日%H:%M", "%H:%M", "%Y/%m/%d %H:%M")
    for fmt in formats:
        try:
            dt.datetime.strptime(text, fmt)
        except ValueError:
            continue
        return True
    return False


def _time(value: str) -> bool:
    parts = value.split("~")
    return 1 <= len(parts) <= 2 and all(_is_time_point(p) for p in parts)


def _amount(value: str) -> bool:
    m = _AMOUNT.match(value)
    return m is not None and len(m.group("int").replace(",", "")) <= 12


def _symbol(value: str) -> bool:
    return len(value) <= 5 and all(not c.isalnum() and not c.isspace() for c in value)


def _name(value: str) -> bool:
    if re.fullmatch(f"[{_HAN}]{{1,10}}", value):
        return True
    return len(value) <= 20 and bool(re.fullmatch(r"[A-Za-z\x21-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e ]+", value))


RULES: dict[str, Callable[[str], bool]] = {
    "thing": lambda v: len(v) <= 20 and v.isprintable(),
    "character_string": lambda v: len(v) <= 32 and bool(_ASCII_SYMBOLIC.match(v)),
    "amount": _amount,
    "time": _time,
    "phrase": lambda v: bool(re.fullmatch(f"[{_HAN}]{{1,5}}", v)),
    "number": lambda v: len(v) <= 32 and bool(re.fullmatch(r"\d+(\.\d+)?", v)),
    "letter": lambda v: bool(re.fullmatch(r"[A-Za-z]{1,32}", v)),
    "symbol": _symbol,
    "car_number": lambda v: len(v) <= 8 and bool(re.fullmatch(f"[{_HAN}]?[A-Za-z0-9]+[{_HAN}]?", v)),
    "name": _name,
    "phone_number": lambda v: bool(re.fullmatch(r"[0-9+\-() ]{1,17}", v)),
}


def key_type(key: str) -> str | None:
    m = _KEY.match(key)
    if not m or m.group(1) not in RULES:
        return None
    return m.group(1)


def invalid_keys(data: dict[str, object]) -> list[str]:
    """Keys of ``data`` whose value breaks its type's rule (empty values included)."""
    bad = []
    for key, entry in data.items():
        kind = key_type(key)
        if kind is None:
            continue
        value = entry.get("value") if isinstance(entry, dict) else None
        if not isinstance(value, str) or not value or not RULES[kind](value):
            bad.append(key)
    return bad
