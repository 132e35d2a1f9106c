"""Accessors for what ``payments.init_app`` put in ``app.extensions`` (inside an app context)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import current_app

from config import Settings
from payments.checkout import CheckoutPolicy
from payments.wechatpay import WeChatPayGateway

GATEWAY_KEY = "renopay.wechatpay"
OAUTH_KEY = "renopay.payments.oauth"


def settings() -> Settings:
    value = current_app.extensions["renopay.settings"]
    assert isinstance(value, Settings)
    return value


def gateway() -> WeChatPayGateway:
    gw = current_app.extensions[GATEWAY_KEY]
    if not isinstance(gw, WeChatPayGateway):  # a factory (certificate mode): build on first use
        gw = current_app.extensions[GATEWAY_KEY] = gw()
    assert isinstance(gw, WeChatPayGateway)
    return gw


def checkout_policy() -> CheckoutPolicy:
    s = settings()
    return CheckoutPolicy(
        min_partial_fen=s.min_partial_payment_fen,
        ttl=dt.timedelta(minutes=s.attempt_ttl_minutes),
        company_name=s.company_name,
    )


def oauth_client() -> Any:
    """The Official Account client's OAuth helper (bot/client.py). ``Any``: payments stays free of bot's
    types; it only calls ``oauth_authorize_url`` and ``exchange_oauth_code``."""
    return current_app.extensions[OAUTH_KEY]
