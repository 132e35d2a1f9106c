"""Template notices built from outbox event payloads, delivered by the relay (erp_sync.relay).

MINIMAL STAND-IN written by the chat issue: only ``bill.opened`` (the customer's 待支付账单 notice).
The receipts-and-notices issue owns this module and replaces it with the full set (field rules,
fallbacks, TEMPLATESENDJOBFINISH).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask

from bot.client import PermanentWeChatError, WeChatApiError
from erp_sync import PermanentError, RetryableError, Subscriber, register_subscriber
from erp_sync.outbox import Topic

DEFAULT_TEMPLATES = {"bill_opened": {"template_id": "sandbox_bill_opened"}}


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}元"


class CustomerNotices(Subscriber):
    name = "notices"
    topics = frozenset({Topic.bill_opened.value})

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.handlers: dict[str, Callable[[Mapping[str, Any]], None]] = {
            Topic.bill_opened.value: self.bill_opened,
        }

    def deliver(self, payload: Mapping[str, Any]) -> None:
        handler = self.handlers.get(str(payload.get("type")))
        if handler is None:
            return
        try:
            with self.app.app_context():
                handler(payload)
        except PermanentWeChatError as exc:
            raise PermanentError(f"wechat {exc.errcode}") from exc
        except WeChatApiError as exc:
            raise RetryableError(f"wechat {exc.errcode or exc.http_status or 'transport'}") from exc

    def _template_id(self, name: str) -> str:
        configured = self.app.extensions["renopay.settings"].templates.get(name)
        return str((configured or DEFAULT_TEMPLATES[name])["template_id"])

    def bill_opened(self, payload: Mapping[str, Any]) -> None:
        from bot import wechat_client

        bill, data = payload.get("bill") or {}, payload.get("data") or {}
        openid = (data.get("customer") or {}).get("openid")
        if not openid:
            return  # not bound to the account yet: staff hand over the pay link or the QR
        number = str(bill["number"])
        fields = {
            "character_string1": number,
            "amount2": _yuan(int(data.get("outstanding_fen") or bill["amount_fen"])),
            "thing3": str(data.get("title") or bill.get("stage") or "账单")[:20],
            "time4": data.get("due_date") or str(payload.get("created_at", ""))[:10],
        }
        url = self.app.extensions["renopay.links"].pay_url(number)
        wechat_client(self.app).send_template(openid, self._template_id("bill_opened"), fields, url=url)


def init_app(app: Flask) -> None:
    register_subscriber(app, CustomerNotices(app))
