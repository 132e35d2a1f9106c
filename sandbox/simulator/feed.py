"""What each simulated phone shows: the user's own messages and RenoPay's passive replies (kept by
the simulator as it pushes them), merged with what the Official Account stand-in received for that
openid — template messages and customer-service messages — in time order."""

from __future__ import annotations

import itertools
import re
import threading
from typing import Any

from sandbox import push_client as pc
from sandbox.wechat_api import WeChatApiState

MAX_ITEMS = 1000
FIELD_LABELS = {  # category-template keys by type (keyword name minus its digits)
    "character_string": "编号", "amount": "金额", "thing": "事项", "time": "时间", "phrase": "状态",
    "name": "姓名", "number": "数量", "phone_number": "电话", "date": "日期",
}
# Titles by notice kind (bot/notice_templates.py); sandbox template ids are ``sandbox_<kind>``.
# Longest keys first, so "payment_failed" is never taken for "payment".
TEMPLATE_TITLES = {
    "staff_reconciliation": "对账结果通知", "staff_refund_problem": "退款异常提醒",
    "staff_dead_letter": "ERP 推送失败提醒", "staff_anomaly": "收款异常提醒", "staff_payment": "客户付款通知",
    "payment_succeeded": "收款成功通知（电子收据）", "payment_failed": "支付未完成提醒",
    "refund_succeeded": "退款成功通知", "refund_failed": "退款失败通知",
    "bill_reminded": "付款提醒", "bill_opened": "待支付账单提醒",
}


class ConversationLog:
    """The simulator's side of every chat: what each phone sent and the passive reply it got."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    def sent(self, openid: str, at: float, text: str) -> None:
        self._append({"openid": openid, "at": at, "dir": "out", "type": "text", "text": text})

    def event(self, openid: str, at: float, text: str) -> None:
        self._append({"openid": openid, "at": at, "dir": "sys", "type": "text", "text": text})

    def answered(self, openid: str, at: float, result: pc.PushResult | None) -> dict[str, Any] | None:
        """Record the reply WeChat would show (a message, or the 'cannot serve' notice); returns it."""
        if result is None:
            return None
        if not result.ok:
            item = {"dir": "sys", "type": "text", "text": pc.SERVICE_UNAVAILABLE, "reason": result.reason}
        elif result.reply is None:
            return None
        else:
            item = {"dir": "in", **reply_item(result.reply)}
        return self._append({"openid": openid, "at": at, **item})

    def _append(self, item: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            item["id"] = f"c{next(self._ids)}"
            self._items.append(item)
            del self._items[:-MAX_ITEMS]
            return dict(item)

    def for_openid(self, openid: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(i) for i in self._items if i["openid"] == openid]


def reply_item(reply: dict[str, Any]) -> dict[str, Any]:
    """A passive reply (parsed XML) as a feed item."""
    match reply.get("MsgType"):
        case "text":
            return {"type": "text", "text": str(reply.get("Content") or "")}
        case "image":
            return {"type": "image", "media_id": (reply.get("Image") or {}).get("MediaId")}
        case "news":
            items = (reply.get("Articles") or {}).get("item") or []
            items = items if isinstance(items, list) else [items]
            return {"type": "news", "articles": [
                {"title": a.get("Title") or "", "description": a.get("Description") or "",
                 "url": a.get("Url")} for a in items
            ]}
        case "transfer_customer_service":
            return {"type": "notice", "text": "已为您转接人工客服，请稍候。"}
    return {"type": "notice", "text": f"（{reply.get('MsgType')} 消息）"}


def custom_item(message: dict[str, Any]) -> dict[str, Any]:
    kind = message.get("msgtype")
    body = message.get(str(kind)) or {}
    match kind:
        case "text":
            return {"type": "text", "text": str(body.get("content") or "")}
        case "image":
            return {"type": "image", "media_id": body.get("media_id")}
        case "news":
            return {"type": "news", "articles": [
                {"title": a.get("title", ""), "description": a.get("description", ""), "url": a.get("url")}
                for a in body.get("articles") or []
            ]}
    return {"type": "notice", "text": f"（{kind} 消息）"}


def template_item(message: dict[str, Any]) -> dict[str, Any]:
    template_id = str(message.get("template_id") or "")
    title = next((t for key, t in TEMPLATE_TITLES.items() if key in template_id), "模板消息")
    rows = []
    for key, field in (message.get("data") or {}).items():
        value = field.get("value") if isinstance(field, dict) else field
        if key in ("first", "remark"):
            rows.append({"label": "", "value": str(value)})
            continue
        kind = re.sub(r"\d+$", "", key)
        rows.append({"label": FIELD_LABELS.get(kind, key), "value": str(value)})
    return {"type": "template", "title": title, "template_id": template_id, "rows": rows,
            "url": message.get("url"), "status": message.get("status")}


def timeline(log: ConversationLog, state: WeChatApiState, openid: str) -> list[dict[str, Any]]:
    items = log.for_openid(openid)
    for n, msg in enumerate(state.template_messages_for(openid)):
        item_id = f"t{msg.get('msgid', n)}"
        items.append({"id": item_id, "at": msg["sent_at"], "dir": "in", **template_item(msg)})
    for n, msg in enumerate(state.custom_messages_for(openid)):
        items.append({"id": f"k{n}", "at": msg["sent_at"], "dir": "in", **custom_item(msg)})
    items.sort(key=lambda i: (i["at"], i["id"]))
    return items
