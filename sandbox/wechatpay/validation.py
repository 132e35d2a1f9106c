"""Field validation of order and refund requests, with WeChat's error codes."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from urllib.parse import urlsplit

from sandbox.keys import SandboxCredentials

from .errors import ApiError, now_cst, param_error

OUT_TRADE_NO = re.compile(r"[0-9A-Za-z_\-*]{6,32}")
OUT_REFUND_NO = re.compile(r"[0-9A-Za-z_\-*@|]{1,64}")


def _string(
    body: dict[str, Any], field: str, *, required: bool = True, max_len: int | None = None
) -> str | None:
    value = body.get(field)
    if value is None:
        if required:
            raise param_error(
                f"输入源“/body/{field}”映射到字段“{field}”必填性规则校验失败，此字段为必填项", field
            )
        return None
    if not isinstance(value, str) or (required and not value):
        raise param_error(f"字段“{field}”类型或格式错误", field)
    if max_len is not None and len(value) > max_len:
        raise param_error(f"字段“{field}”长度超过限制（{max_len}）", field)
    return value


def check_notify_url(url: str | None, field: str = "notify_url") -> None:
    if url is None:
        return
    parts = urlsplit(url)
    # WeChat wants https without a query string; the sandbox also accepts plain http (it is local).
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or len(url) > 255:
        raise param_error("notify_url格式不正确：须为不带参数的绝对URL", field)


def check_merchant(body: dict[str, Any], credentials: SandboxCredentials, *, need_appid: bool = True) -> None:
    mchid = _string(body, "mchid")
    if mchid != credentials.mch_id:
        raise ApiError(400, "MCH_NOT_EXISTS", "商户号不存在")
    if need_appid:
        appid = _string(body, "appid")
        if appid != credentials.app_id:
            raise ApiError(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配")


def amount_total(amount: Any, field: str = "total") -> int:
    if not isinstance(amount, dict):
        raise param_error(
            "输入源“/body/amount”映射到字段“amount”必填性规则校验失败，此字段为必填项", "amount"
        )
    value = amount.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise param_error(f"amount.{field}须为大于0的整数（单位：分）", f"amount.{field}")
    currency = amount.get("currency", "CNY")
    if currency != "CNY":
        raise param_error("币种仅支持CNY", "amount.currency")
    return value


def validate_order(trade_type: str, body: dict[str, Any], credentials: SandboxCredentials) -> dict[str, Any]:
    """Check a JSAPI/NATIVE order request; return the normalised fields the stand-in keeps."""
    check_merchant(body, credentials)
    description = _string(body, "description", max_len=127)
    out_trade_no = _string(body, "out_trade_no")
    assert out_trade_no is not None
    if not OUT_TRADE_NO.fullmatch(out_trade_no):
        raise param_error("out_trade_no须为6-32位数字、大小写字母、_-*", "out_trade_no")
    notify_url = _string(body, "notify_url", max_len=255)
    check_notify_url(notify_url)
    total = amount_total(body.get("amount"))
    attach = _string(body, "attach", required=False, max_len=128)
    time_expire = None
    raw_expire = _string(body, "time_expire", required=False)
    if raw_expire is not None:
        try:
            time_expire = dt.datetime.fromisoformat(raw_expire)
        except ValueError:
            raise param_error("time_expire须为RFC3339格式", "time_expire") from None
        if time_expire.tzinfo is None:
            raise param_error("time_expire须带时区", "time_expire")
        if time_expire <= now_cst():
            raise ApiError(400, "INVALID_REQUEST", "订单失效时间须晚于当前时间")
    openid = None
    if trade_type == "JSAPI":
        payer = body.get("payer")
        openid = payer.get("openid") if isinstance(payer, dict) else None
        if not isinstance(openid, str) or not openid:
            raise param_error(
                "输入源“/body/payer/openid”映射到字段“openid”必填性规则校验失败，此字段为必填项",
                "payer.openid",
            )
    return {
        "description": description,
        "out_trade_no": out_trade_no,
        "notify_url": notify_url,
        "total": total,
        "attach": attach,
        "time_expire": time_expire,
        "openid": openid,
    }


def validate_refund(body: dict[str, Any]) -> dict[str, Any]:
    out_refund_no = _string(body, "out_refund_no")
    assert out_refund_no is not None
    if not OUT_REFUND_NO.fullmatch(out_refund_no):
        raise param_error("out_refund_no须为1-64位数字、大小写字母、_-|*@", "out_refund_no")
    transaction_id = _string(body, "transaction_id", required=False)
    out_trade_no = _string(body, "out_trade_no", required=False)
    if not transaction_id and not out_trade_no:
        raise param_error("transaction_id和out_trade_no必须二选一", "out_trade_no")
    reason = _string(body, "reason", required=False, max_len=80)
    notify_url = _string(body, "notify_url", required=False, max_len=256)
    check_notify_url(notify_url)
    amount = body.get("amount")
    refund = amount_total(amount, "refund")
    total = amount_total(amount, "total")
    if not isinstance(amount, dict) or "currency" not in amount:
        raise param_error(
            "输入源“/body/amount/currency”映射到字段“currency”必填性规则校验失败，此字段为必填项",
            "amount.currency",
        )
    return {
        "out_refund_no": out_refund_no,
        "transaction_id": transaction_id,
        "out_trade_no": out_trade_no,
        "reason": reason,
        "notify_url": notify_url,
        "refund": refund,
        "total": total,
        "funds_account": body.get("funds_account"),
    }
