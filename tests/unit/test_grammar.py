"""The chat grammar table: words, aliases, NFKC, glued arguments, and docs/chat-commands.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from handlers.grammar import COMMANDS, Audience, markdown_table, parse

DOC = Path(__file__).resolve().parents[2] / "docs" / "chat-commands.md"


@pytest.mark.parametrize(
    ("text", "audience", "key", "args"),
    [
        ("开单 张三 13800138000 38000 首期款", Audience.staff, "issue",
         ("张三", "13800138000", "38000", "首期款")),
        ("ＢＩＬＬ　张三　１００　定金", Audience.staff, "issue", ("张三", "100", "定金")),
        ("  确认  ", Audience.staff, "confirm", ()),
        ("OK", Audience.staff, "confirm", ()),
        ("账单 B2611-0042", Audience.staff, "show", ("B2611-0042",)),
        ("账单", Audience.customer, "my_bills", ()),
        ("我的账单", Audience.customer, "my_bills", ()),
        ("支付B2611-0042", Audience.customer, "pay", ("B2611-0042",)),
        ("收据 B2611-0042", Audience.customer, "receipts", ("B2611-0042",)),
        ("？", Audience.customer, "help", ()),
        ("员工 ABC123", Audience.customer, "bind_staff", ("ABC123",)),
        ("员工 ABC123", Audience.staff, "bind_staff", ("ABC123",)),
        ("收款 B2611-0042 1万 转账 工行", Audience.staff, "collect", ("B2611-0042", "1万", "转账", "工行")),
    ],
)
def test_messages_parse_to_their_command(
    text: str, audience: Audience, key: str, args: tuple[str, ...]
) -> None:
    parsed = parse(text, audience)
    assert parsed is not None and (parsed.command.key, parsed.args) == (key, args)


@pytest.mark.parametrize(("text", "audience"), [("", Audience.customer), ("   ", Audience.staff),
                                                ("开单 张三 100 首期款", Audience.customer),
                                                ("hello", Audience.staff), ("😀", Audience.customer)])
def test_other_messages_are_not_commands(text: str, audience: Audience) -> None:
    assert parse(text, audience) is None


def test_no_word_means_two_commands_for_one_audience() -> None:
    for audience in (Audience.staff, Audience.customer):
        words = [w.lower() for c in COMMANDS if c.audience in (audience, Audience.anyone) for w in c.words]
        assert len(words) == len(set(words)), audience


def test_every_example_parses_to_its_own_command() -> None:
    for command in COMMANDS:
        audience = Audience.customer if command.audience is Audience.anyone else command.audience
        parsed = parse(command.example, audience)
        assert parsed is not None and parsed.command == command
        assert len(parsed.args) >= command.min_args


@pytest.mark.parametrize("audience", list(Audience))
def test_docs_carry_the_generated_command_table(audience: Audience) -> None:
    assert markdown_table(audience) in DOC.read_text(encoding="utf-8")
