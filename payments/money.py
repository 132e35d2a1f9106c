"""Money at the edges: text → int fen (via Decimal, once), and int fen → ``¥38,000.00`` text.

Inside RenoPay money is always an ``int`` of fen. Floats never appear.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation

from payments.errors import InvalidAmount

FEN_PER_YUAN = 100
_WAN = Decimal(10_000)

# After NFKC (full-width → ASCII) and removing separators/currency marks, what remains must be a
# plain decimal number, optionally followed by 万 (ten thousand).
_NUMBER = re.compile(r"^(?P<number>\d+(?:\.\d+)?|\.\d+)(?P<wan>万)?$")
_STRIP = str.maketrans({",": None, "，": None, " ": None, "\u3000": None, "_": None})
_PREFIXES = ("¥", "￥", "RMB", "CNY", "人民币")
_SUFFIXES = ("元整", "元", "块钱", "块", "RMB", "CNY")


def parse_amount(text: str, *, max_fen: int | None = None) -> int:
    """Parse an amount a person typed into fen.

    Accepts ``38000``, ``38,000.50``, ``3.8万``, ``¥38000``, ``38000元`` and full-width digits.
    Refuses zero, negatives, more than two decimals (after 万 scaling) and amounts above ``max_fen``,
    each with a message fit to show the person.
    """
    if not isinstance(text, str):
        raise InvalidAmount("金额格式不对，请输入数字，例如 38000 或 3.8万")
    raw = unicodedata.normalize("NFKC", text).strip()
    if not raw:
        raise InvalidAmount("请填写金额，例如 38000 或 3.8万")
    if raw.startswith(("-", "−", "负")):
        raise InvalidAmount("金额不能为负数")
    cleaned = raw.translate(_STRIP)
    upper = cleaned.upper()
    for prefix in _PREFIXES:
        if upper.startswith(prefix):
            cleaned = cleaned[len(prefix) :]
            upper = cleaned.upper()
            break
    for suffix in _SUFFIXES:
        if upper.endswith(suffix):
            cleaned = cleaned[: -len(suffix)]
            break
    if cleaned.startswith(("-", "−")):
        raise InvalidAmount("金额不能为负数")
    match = _NUMBER.match(cleaned)
    if not match or not _well_grouped(raw):
        raise InvalidAmount(f"看不懂金额“{text.strip()[:20]}”，请输入数字，例如 38000 或 3.8万")
    try:
        value = Decimal(match["number"])
    except InvalidOperation as exc:  # pragma: no cover - the regex already guarantees digits
        raise InvalidAmount("金额格式不对") from exc
    if match["wan"]:
        value *= _WAN
    fen = value * FEN_PER_YUAN
    if fen != fen.to_integral_value():
        raise InvalidAmount("金额最多保留两位小数（精确到分）")
    result = int(fen)
    if result <= 0:
        raise InvalidAmount("金额必须大于 0")
    if max_fen is not None and result > max_fen:
        raise InvalidAmount(f"金额超过单笔账单上限 {format_fen(max_fen)}")
    return result


def _well_grouped(raw: str) -> bool:
    """Thousands separators, when used, must sit every three digits (``38,000`` not ``3,80,00``)."""
    head = unicodedata.normalize("NFKC", raw).split(".")[0]
    if "," not in head and "，" not in head:
        return True
    digits = re.sub(r"[^\d,，]", "", head)
    groups = re.split(r"[,，]", digits)
    return bool(groups[0]) and len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:])


def format_fen(fen: int) -> str:
    """``3800000`` → ``¥38,000.00``; negative amounts keep their sign before the currency mark."""
    sign = "-" if fen < 0 else ""
    yuan, cents = divmod(abs(fen), FEN_PER_YUAN)
    return f"{sign}¥{yuan:,}.{cents:02d}"


def fen_to_yuan_str(fen: int) -> str:
    """``3800000`` → ``38000.00`` (for wire formats and CSV)."""
    sign = "-" if fen < 0 else ""
    yuan, cents = divmod(abs(fen), FEN_PER_YUAN)
    return f"{sign}{yuan}.{cents:02d}"


def yuan_str_to_fen(text: str) -> int:
    """Exact conversion of a yuan amount from a machine source (WeChat's bill CSV) to fen."""
    value = Decimal(text.strip().lstrip("`").replace(",", ""))
    fen = value * FEN_PER_YUAN
    if fen != fen.to_integral_value():
        raise ValueError(f"amount {text!r} has more than two decimals")
    return int(fen)


_DIGITS = "零壹贰叁肆伍陆柒捌玖"
_SMALL_UNITS = ("", "拾", "佰", "仟")
_BIG_UNITS = ("", "万", "亿", "万亿")


def _four_digits(n: int) -> str:
    """Capital text of 0 < n < 10000, with inner zeros collapsed to one 零."""
    out: list[str] = []
    zero_pending = False
    for pos in range(3, -1, -1):
        digit = (n // 10**pos) % 10
        if digit == 0:
            zero_pending = bool(out)
            continue
        if zero_pending:
            out.append("零")
            zero_pending = False
        out.append(_DIGITS[digit] + _SMALL_UNITS[pos])
    return "".join(out)


def chinese_capital(fen: int) -> str:
    """Amount in Chinese financial capitals, as printed on a 收据: 3800000 → 叁万捌仟元整."""
    if fen < 0:
        return "负" + chinese_capital(-fen)
    yuan, cents = divmod(fen, FEN_PER_YUAN)
    jiao, fen_digit = divmod(cents, 10)
    parts: list[str] = []
    if yuan:
        groups: list[int] = []
        rest = yuan
        while rest:
            groups.append(rest % 10_000)
            rest //= 10_000
        text = ""
        need_zero = False
        for index in range(len(groups) - 1, -1, -1):
            group = groups[index]
            if group == 0:
                need_zero = bool(text)
                continue
            if text and (need_zero or group < 1000):
                text += "零"
            text += _four_digits(group) + _BIG_UNITS[index]
            need_zero = False
        parts.append(text + "元")
    if not jiao and not fen_digit:
        return ("".join(parts) or "零元") + "整"
    # Per the PBOC rules a 零 may stand where the yuan digit is 0 before 角, and must stand where
    # 角 is 0 before 分; 整 follows 元 but not 角.
    if jiao:
        if yuan % 10 == 0 and yuan:
            parts.append("零")
        parts.append(_DIGITS[jiao] + "角")
    elif yuan:
        parts.append("零")
    if fen_digit:
        parts.append(_DIGITS[fen_digit] + "分")
    return "".join(parts)
