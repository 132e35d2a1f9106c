"""What each outbox event means as notices: who gets which kind, with which link, values and text.

Everything is built from the event payload (the ERP webhook body: ``bill`` + ``data``); the only
outside facts are staff openids and the finance roster, asked of a :class:`Directory` that the
composition root provides (bot/ never imports payments). Customer-facing words are Chinese.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from bot.notice_templates import parse_time, time_text

DEAD_LETTER_TOPIC = "delivery.dead"


class Directory(Protocol):
    """Who is who, at delivery time (payments/notice_directory.py reads the Staff and Customer rows)."""

    def staff_openid(self, staff_id: int) -> str | None: ...

    def finance_openids(self) -> list[str]: ...

    def last_message_at(self, openid: str) -> dt.datetime | None: ...


class NoDirectory:
    def staff_openid(self, staff_id: int) -> str | None:
        return None

    def finance_openids(self) -> list[str]:
        return []

    def last_message_at(self, openid: str) -> dt.datetime | None:
        return None


class LinkMaker(Protocol):
    def pay_url(self, bill_number: str) -> str: ...

    def receipt_url(self, receipt_no: str) -> str: ...


@dataclass(frozen=True)
class Planned:
    kind: str
    openid: str
    link: str | None = None


RESULTS = {
    "payment.failed": "支付未完成", "refund.succeeded": "退款成功", "refund.failed": "退款失败",
    "payment.succeeded": "支付成功", "payment.recorded_offline": "已收款", "bill.opened": "待支付",
    "bill.reminded": "待支付", "payment.anomaly": "收款异常", DEAD_LETTER_TOPIC: "推送失败",
}
ANOMALY_LABELS = {
    "overpayment": "超额付款", "bill_not_payable": "账单不可付款", "amount_mismatch": "金额不符",
    "merchant_mismatch": "商户不符", "unknown_order": "未知订单", "refund_abnormal": "退款异常",
    "reconciliation": "对账差异",
}
RECONCILIATION_TOPIC = "reconciliation.finished"  # emitted by payments/reconcile.py (not an ERP topic)
RECONCILE_RESULTS = {"clean": "一致", "differences": "有差异", "failed": "失败"}
FAILURE_REASONS = {"expired": "支付超时", "user_cancelled": "已取消支付", "bill_voided": "账单已作废"}


def yuan(fen: object) -> str:
    value = fen if isinstance(fen, int) and not isinstance(fen, bool) else 0
    sign = "-" if value < 0 else ""
    whole, cents = divmod(abs(value), 100)
    return f"{sign}¥{whole:,}.{cents:02d}"


# ---------------------------------------------------------------------------------------- values


def values(payload: Mapping[str, Any]) -> dict[str, object]:
    """The named sources a template's fields may use (bot/notice_templates.py SOURCES)."""
    bill, data = payload.get("bill") or {}, payload.get("data") or {}
    payment, refund = data.get("payment") or {}, data.get("refund") or {}
    topic = str(payload.get("type", ""))
    moment = parse_time(str(payment.get("paid_at") or payload.get("created_at") or "")) or _now()
    facts = (data.get("detail") or {}).get("facts") or {}
    amount = _first_int(payment.get("amount_fen"), refund.get("amount_fen"), data.get("amount_fen"),
                        data.get("outstanding_fen"))
    return {
        "bill_number": bill.get("number") or data.get("bill_number"),
        "bill_title": data.get("title") or bill.get("stage") or "账单",
        "stage": bill.get("stage"),
        "contract_no": bill.get("contract_no"),
        "customer_name": (data.get("customer") or {}).get("name"),
        "bill_amount": bill.get("amount_fen"),
        "outstanding": _first_int(data.get("outstanding_fen"), bill.get("amount_fen")),
        "amount": amount,
        "due_date": data.get("due_date") or moment,
        "time": moment,
        "paid_at": moment,
        "receipt_no": payment.get("receipt_no") or refund.get("receipt_no"),
        "transaction_id": payment.get("transaction_id") or refund.get("transaction_id")
        or facts.get("transaction_id"),
        "reason": refund.get("reason") or FAILURE_REASONS.get(str(data.get("reason")), data.get("reason")),
        "result": "退款异常" if refund.get("status") == "abnormal" else RESULTS.get(topic, "通知"),
        "summary": _summary(topic, bill, data),
        "next_step": data.get("next_step") or "请在后台处理。",
        "company_name": data.get("company_name"),
    }


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _first_int(*candidates: object) -> int:
    return next((c for c in candidates if isinstance(c, int) and not isinstance(c, bool)), 0)


def _summary(topic: str, bill: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    number = bill.get("number") or data.get("bill_number") or ""
    if topic == "payment.anomaly":
        return f"{ANOMALY_LABELS.get(str(data.get('kind')), '收款异常')} {number}".strip()
    if topic == "refund.failed":
        status = (data.get("refund") or {}).get("status")
        return f"{'退款异常' if status == 'abnormal' else '退款失败'} {number}".strip()
    if topic == RECONCILIATION_TOPIC:
        return _reconciliation_summary(data)
    if topic == DEAD_LETTER_TOPIC:
        who = "ERP" if data.get("subscriber") == "erp" else "通知"
        return f"{who}推送失败 {data.get('topic', '')}".strip()
    return f"{RESULTS.get(topic, '通知')} {number}".strip()


def _reconciliation_summary(data: Mapping[str, Any]) -> str:
    """The daily trade-bill match (payments/reconcile.py): date, result, how many differences."""
    counts = data.get("counts") or {}
    found = sum(int(counts.get(k) or 0) for k in ("missing_ours", "missing_wechat", "amount_differences"))
    text = f"对账 {data.get('bill_date', '')} {RECONCILE_RESULTS.get(str(data.get('status')), '')}"
    return f"{text} {found} 项，已补记 {int(counts.get('healed') or 0)} 项" if found else text


# ----------------------------------------------------------------------------------------- plans


Planner = Callable[[Mapping[str, Any], Directory, LinkMaker], list[Planned]]


def plan(payload: Mapping[str, Any], directory: Directory, links: LinkMaker) -> list[Planned]:
    """The notices an event asks for, at most one per (recipient, kind)."""
    planner = PLANNERS.get(str(payload.get("type")))
    if planner is None:
        return []
    seen: set[tuple[str, str]] = set()
    unique = []
    for item in planner(payload, directory, links):
        if item.openid and (item.openid, item.kind) not in seen:
            seen.add((item.openid, item.kind))
            unique.append(item)
    return unique


def _customer(payload: Mapping[str, Any]) -> str:
    return str(((payload.get("data") or {}).get("customer") or {}).get("openid") or "")


def _receipt_link(payload: Mapping[str, Any], links: LinkMaker) -> str | None:
    receipt_no = values(payload)["receipt_no"]
    return links.receipt_url(str(receipt_no)) if receipt_no else None


def _pay_link(payload: Mapping[str, Any], links: LinkMaker) -> str | None:
    number = (payload.get("bill") or {}).get("number")
    return links.pay_url(str(number)) if number else None


def _to_customer(kind: str, link: Callable[[Mapping[str, Any], LinkMaker], str | None]) -> Planner:
    return lambda p, d, links: [Planned(kind, _customer(p), link(p, links))]


def _payment(payload: Mapping[str, Any], directory: Directory, links: LinkMaker) -> list[Planned]:
    link = _receipt_link(payload, links)
    found = [Planned("payment_succeeded", _customer(payload), link)]
    issuer = (payload.get("data") or {}).get("issued_by_id")
    staff = directory.staff_openid(int(issuer)) if isinstance(issuer, int) else None
    return found + ([Planned("staff_payment", staff, link)] if staff else [])


def _refund_failed(payload: Mapping[str, Any], directory: Directory, links: LinkMaker) -> list[Planned]:
    link = _receipt_link(payload, links)
    customer = [Planned("refund_failed", _customer(payload), link)]
    refund = (payload.get("data") or {}).get("refund") or {}
    if refund.get("status") == "abnormal":
        return customer  # finance hears of it once, from the payment.anomaly alert with the next step
    finance = [Planned("staff_refund_problem", openid, link) for openid in directory.finance_openids()]
    return [*customer, *finance]


def _to_finance(kind: str) -> Planner:
    return lambda p, directory, links: [Planned(kind, o) for o in directory.finance_openids()]


PLANNERS: dict[str, Planner] = {
    "bill.opened": _to_customer("bill_opened", _pay_link),
    "bill.reminded": _to_customer("bill_reminded", _pay_link),
    "payment.succeeded": _payment,
    "payment.recorded_offline": _payment,
    "payment.failed": _to_customer("payment_failed", _pay_link),
    "refund.succeeded": _to_customer("refund_succeeded", _receipt_link),
    "refund.failed": _refund_failed,
    "payment.anomaly": _to_finance("staff_anomaly"),
    DEAD_LETTER_TOPIC: _to_finance("staff_dead_letter"),
    RECONCILIATION_TOPIC: _to_finance("staff_reconciliation"),
}
TOPICS = frozenset(PLANNERS)


# ------------------------------------------------------------------------------ fallback text


TEXTS = {
    "bill_opened": "【待支付账单】{bill_number} {bill_title}\n待付金额：{outstanding}\n到期日：{due_date}",
    "bill_reminded": "【付款提醒】您的账单 {bill_number}（{bill_title}）尚有 {outstanding} 待支付，"
                     "到期日 {due_date}。",
    "payment_succeeded": "【收款成功】已收到您的付款 {amount}（{bill_title}），收据编号 {receipt_no}，"
                         "时间 {time}。",
    "payment_failed": "【支付未完成】账单 {bill_number}（{bill_title}）的付款 {amount} 未完成：{reason}。",
    "refund_succeeded": "【退款成功】{amount} 已原路退回，对应收据 {receipt_no}。",
    "refund_failed": "【退款未成功】对应收据 {receipt_no} 的退款 {amount} 暂未成功，我们会尽快处理。",
    "staff_payment": "【收款通知】{customer_name} 支付 {amount}，账单 {bill_number}，时间 {time}。",
    "staff_anomaly": "【收款异常】{summary}，金额 {amount}，微信支付单号 {transaction_id}。{next_step}",
    "staff_refund_problem": "【退款问题】{summary}，金额 {amount}，收据 {receipt_no}。请尽快处理。",
    "staff_dead_letter": "【推送失败】{summary}，账单 {bill_number}。请检查后重新推送。",
    "staff_reconciliation": "【每日对账】{summary}，微信收款 {amount}。明细：flask --app app reconcile。",
}
LINK_WORDS = {"bill_opened": "点击查看并支付", "bill_reminded": "立即支付", "payment_failed": "重新支付"}


def custom_text(kind: str, source: Mapping[str, object], link: str | None) -> str:
    """The customer-service message sent instead of a template (plain text with an ``<a>`` link)."""
    shown = {k: _shown(k, v) for k, v in source.items()}
    text = TEXTS[kind].format_map(shown)
    if link:
        text += f'\n<a href="{link}">{LINK_WORDS.get(kind, "查看收据")}</a>'
    return text


def _shown(key: str, value: object) -> str:
    if key in ("amount", "outstanding", "bill_amount"):
        return yuan(value)
    if key in ("time", "paid_at", "due_date"):
        return time_text(value)
    return str(value) if value not in (None, "") else "-"
