"""Money parsing and formatting: a table of what people type, and what RenoPay makes of it."""

import pytest

from payments.errors import InvalidAmount
from payments.money import chinese_capital, fen_to_yuan_str, format_fen, parse_amount, yuan_str_to_fen

MAX = 100_000_000  # ¥1,000,000.00

VALID = [
    ("38000", 3_800_000),
    ("38,000.50", 3_800_050),
    ("3.8万", 3_800_000),
    ("¥38000", 3_800_000),
    ("￥38000", 3_800_000),
    ("38000元", 3_800_000),
    ("38000元整", 3_800_000),
    ("３８０００", 3_800_000),  # full-width digits
    ("３８，０００．５０", 3_800_050),  # full-width separators
    ("0.01", 1),
    (".5", 50),
    ("1", 100),
    ("10.1", 1_010),
    ("12万", 12_000_000),
    ("0.5万", 500_000),
    ("1.2345万", 1_234_500),
    ("RMB 500", 50_000),
    ("人民币500元", 50_000),
    ("500块", 50_000),
    (" 38000 ", 3_800_000),
    ("1,000,000", 100_000_000),
    ("100万", 100_000_000),
]

INVALID = [
    ("", "请填写金额"),
    ("   ", "请填写金额"),
    ("0", "大于 0"),
    ("0.00", "大于 0"),
    ("-100", "负数"),
    ("负100", "负数"),
    ("¥-100", "负数"),
    ("38000.123", "两位小数"),
    ("1.2345678万", "两位小数"),
    ("abc", "看不懂"),
    ("38k", "看不懂"),
    ("1e5", "看不懂"),
    ("3,80,00", "看不懂"),
    ("38000元元", "看不懂"),
    ("1,000,001", "上限"),
    ("101万", "上限"),
    ("NaN", "看不懂"),
    ("Infinity", "看不懂"),
    ("12.5.3", "看不懂"),
    ("三万", "看不懂"),
    ("38 000 000 000", "上限"),
]


@pytest.mark.parametrize(("text", "fen"), VALID)
def test_valid_amounts_parse_to_exact_fen(text: str, fen: int) -> None:
    assert parse_amount(text, max_fen=MAX) == fen


@pytest.mark.parametrize(("text", "reason"), INVALID)
def test_invalid_amounts_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidAmount) as excinfo:
        parse_amount(text, max_fen=MAX)
    assert reason in excinfo.value.message


def test_table_has_at_least_thirty_cases() -> None:
    assert len(VALID) + len(INVALID) >= 30


@pytest.mark.parametrize(
    ("fen", "text"),
    [
        (3_800_000, "¥38,000.00"),
        (1, "¥0.01"),
        (0, "¥0.00"),
        (100_000_000_000, "¥1,000,000,000.00"),
        (-5, "-¥0.05"),
    ],
)
def test_format_fen(fen: int, text: str) -> None:
    assert format_fen(fen) == text


def test_yuan_round_trip_is_exact() -> None:
    for fen in (1, 99, 100, 3_800_050, 123_456_789):
        assert yuan_str_to_fen(fen_to_yuan_str(fen)) == fen
    assert yuan_str_to_fen("`38000.50") == 3_800_050
    with pytest.raises(ValueError, match="two decimals"):
        yuan_str_to_fen("0.001")


@pytest.mark.parametrize(
    ("fen", "capital"),
    [
        (5, "伍分"),
        (1_000, "壹拾元整"),
        (10_100, "壹佰零壹元整"),
        (100_010, "壹仟元零壹角"),
        (3_800_000, "叁万捌仟元整"),
        (10_000_000_000, "壹亿元整"),
        (10_000_000_005, "壹亿元零伍分"),
        (100_500, "壹仟零伍元整"),
        (1_000_001_000, "壹仟万零壹拾元整"),
        (1_001_000_000, "壹仟零壹万元整"),
        (10_050_000_000, "壹亿零伍拾万元整"),
        (12_345, "壹佰贰拾叁元肆角伍分"),
        (12_340, "壹佰贰拾叁元肆角"),
        (50, "伍角"),
        (0, "零元整"),
        (1_000_000_000_000, "壹佰亿元整"),
    ],
)
def test_chinese_capitals(fen: int, capital: str) -> None:
    assert chinese_capital(fen) == capital
