"""The chat grammar in one table: every command word (Chinese, English aliases), who may use it,
its usage line and an example. Help texts and docs/chat-commands.md are generated from this table.

Text is normalised with NFKC first, so full-width letters, digits, spaces and punctuation
(``ＨＥＬＰ``, ``１２３``, ``　``) read as their ASCII forms.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

ALL_ROLES = frozenset({"sales", "finance", "admin"})
MONEY_ROLES = frozenset({"finance", "admin"})
ROLE_LABELS = {"sales": "销售", "finance": "财务", "admin": "管理员"}


class Audience(StrEnum):
    staff = "staff"
    customer = "customer"
    anyone = "anyone"  # e.g. 员工 <邀请码>, sent before the sender is staff


@dataclass(frozen=True)
class Command:
    key: str
    words: tuple[str, ...]  # the first is the word shown in help; the rest are aliases
    audience: Audience
    usage: str
    example: str
    summary: str
    min_args: int = 0
    roles: frozenset[str] = ALL_ROLES


S, C, A = Audience.staff, Audience.customer, Audience.anyone
COMMANDS: tuple[Command, ...] = (
    Command("issue", ("开单", "bill", "new"), S, "开单 <客户手机号或姓名> <金额> <阶段或说明> [到期日]",
            "开单 张三 13800138000 3.8万 首期款 2026-12-10", "开出账单：先回复预览，再“确认”", 3),
    Command("confirm", ("确认", "confirm", "ok"), S, "确认", "确认",
            "开出刚才预览的账单并通知客户（或提交刚才预览的退款）"),
    Command("cancel", ("取消", "cancel"), S, "取消", "取消", "放弃刚才预览的账单或退款"),
    Command("show", ("账单", "查询", "show"), S, "账单 <编号>", "账单 B2611-0042", "查看一张账单", 1),
    Command("unpaid", ("未付", "unpaid"), S, "未付 [客户手机号或姓名]", "未付 张三", "列出待收款的账单"),
    Command("remind", ("催款", "remind"), S, "催款 <编号>", "催款 B2611-0042",
            "给客户发催款提醒（每张账单每天一次）", 1),
    Command("void", ("作废", "void"), S, "作废 <编号> <原因>", "作废 B2611-0042 金额写错",
            "作废一张未收款的账单", 2),
    Command("collect", ("收款", "collect"), S, "收款 <编号> <金额> <转账|现金> [备注]",
            "收款 B2611-0042 10000 转账 工行尾号1234", "登记线下收款（仅财务）", 3, MONEY_ROLES),
    Command("refund", ("退款", "refund"), S, "退款 <编号> <金额> <原因>", "退款 B2611-0042 500 少做一项吊顶",
            "给客户退款：先回复预览，再“确认”（仅财务）", 3, MONEY_ROLES),
    Command("qr", ("二维码", "收款码", "qr"), S, "二维码 <编号>", "二维码 B2611-0042",
            "获取账单的收款二维码图片，给客户现场扫码", 1),
    Command("receipts", ("收据", "receipt"), S, "收据 <编号>", "收据 B2611-0042", "查看账单的收据链接", 1),
    Command("today", ("今日", "今天", "today"), S, "今日", "今日", "今天的收款、退款和待收"),
    Command("month", ("本月", "month"), S, "本月", "本月", "本月的收款、退款和待收"),
    Command("invite", ("邀请", "invite"), S, "邀请 <客户手机号或姓名>", "邀请 13800138000",
            "获取客户绑定二维码，客户扫码关注后即绑定", 1),
    Command("help", ("帮助", "help", "?"), S, "帮助", "帮助", "查看员工命令"),
    Command("bind_staff", ("员工", "staff"), A, "员工 <邀请码>", "员工 K7MPQ2XH4D",
            "员工用管理员给的一次性邀请码绑定微信", 1),
    Command("my_bills", ("账单", "我的账单", "bills"), C, "账单", "我的账单", "查看待支付的账单和付款链接"),
    Command("pay", ("支付", "付款", "pay"), C, "支付 <编号>", "支付 B2611-0042", "获取一张账单的付款链接", 1),
    Command("receipts", ("收据", "receipt"), C, "收据 <编号>", "收据 B2611-0042", "查看账单的收据", 1),
    Command("help", ("帮助", "help", "?"), C, "帮助", "帮助", "查看可用的功能"),
    Command("human", ("人工", "客服", "human"), C, "人工", "人工", "转接人工客服"),
)

_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Parsed:
    command: Command
    args: tuple[str, ...]


def normalise(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def _index(audience: Audience) -> dict[str, Command]:
    return {w.lower(): c for c in COMMANDS if c.audience in (audience, A) for w in c.words}


_INDEX = {aud: _index(aud) for aud in (S, C)}
# Chinese words may be glued to their first argument (“支付B2611-0042”): longest word first.
_GLUED = {aud: sorted((w for w in idx if not w.isascii()), key=len, reverse=True)
          for aud, idx in _INDEX.items()}


def parse(text: str, audience: Audience) -> Parsed | None:
    """The command a message names for ``audience`` (staff or customer), or None."""
    tokens = normalise(text).split(" ")
    if not tokens or not tokens[0]:
        return None
    index = _INDEX[audience]
    head = tokens[0].lower()
    if head in index:
        return Parsed(index[head], tuple(tokens[1:]))
    if " ".join(tokens[:2]).lower() in index:  # “my bills”-style two-word aliases
        return Parsed(index[" ".join(tokens[:2]).lower()], tuple(tokens[2:]))
    for word in _GLUED[audience]:
        if head.startswith(word):
            return Parsed(index[word], (tokens[0][len(word):], *tokens[1:]))
    return None


def commands_for(audience: Audience, role: str | None = None) -> list[Command]:
    return [c for c in COMMANDS if c.audience is audience and (role is None or role in c.roles)]


def help_text(audience: Audience, role: str | None = None) -> str:
    lines = [f"{c.usage} — {c.summary}" for c in commands_for(audience, role)]
    if audience is S:
        head = f"员工命令（你的角色：{ROLE_LABELS.get(role or '', role or '')}）："
    else:
        head = "您可以发送："
    return head + "\n" + "\n".join(lines)


def usage_text(command: Command) -> str:
    return f"格式：{command.usage}\n例如：{command.example}"


def markdown_table(audience: Audience) -> str:
    """The command table of docs/chat-commands.md (checked against this table by a test)."""
    rows = ["| 命令 | 别名 | 格式 | 例子 | 说明 | 角色 |", "|---|---|---|---|---|---|"]
    for c in COMMANDS:
        if c.audience is audience:
            roles = "、".join(ROLE_LABELS[r] for r in sorted(c.roles)) if audience is S else "—"
            aliases = ", ".join(f"`{w}`" for w in c.words[1:])
            usage = c.usage.replace("|", "\\|")
            rows.append(f"| `{c.words[0]}` | {aliases} | `{usage}` | `{c.example}` | {c.summary} | {roles} |")
    return "\n".join(rows)
