"""The WeChat client's side of ``getBrandWCPayRequest``: check the page's parameters as WeChat does
(appId, the order behind ``prepay_id``, the payer, and ``paySign`` against the merchant's public
key), show the sheet's facts, and when the user confirms make the WeChat Pay stand-in pay — which
sends the real, signed ``TRANSACTION.SUCCESS`` notification to RenoPay."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from payments.money import format_fen
from sandbox.keys import SandboxCredentials
from sandbox.wechatpay import StandIn


class BridgeRefused(Exception):
    """What WeChat would answer with ``get_brand_wcpay_request:fail``; ``message`` is shown."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class SheetFacts:
    out_trade_no: str
    amount_fen: int
    description: str

    def as_dict(self, merchant: str) -> dict[str, Any]:
        return {"out_trade_no": self.out_trade_no, "amount_fen": self.amount_fen,
                "amount_text": format_fen(self.amount_fen), "description": self.description,
                "merchant": merchant}


def check_request(
    creds: SandboxCredentials, standin: StandIn, params: dict[str, Any], openid: str
) -> SheetFacts:
    """Validate the bridge parameters; the order they pay for."""
    if params.get("appId") != creds.app_id:
        raise BridgeRefused("appId 与公众号不一致")
    if params.get("signType") != "RSA" or not _signature_ok(creds, params):
        raise BridgeRefused("支付验证签名失败")
    package = str(params.get("package") or "")
    prepay_id = package.removeprefix("prepay_id=")
    order = next((o for o in standin.orders() if o.get("prepay_id") == prepay_id and prepay_id), None)
    if order is None:
        raise BridgeRefused("订单不存在（prepay_id 无效）")
    if order.get("openid") != openid:
        raise BridgeRefused("当前微信用户与下单用户不一致")
    if order.get("trade_state") != "NOTPAY":
        raise BridgeRefused("订单状态不可支付：" + str(order.get("trade_state")))
    return SheetFacts(str(order["out_trade_no"]), int(order["total"]), str(order.get("description") or ""))


def pay(creds: SandboxCredentials, standin: StandIn, params: dict[str, Any], openid: str) -> dict[str, Any]:
    facts = check_request(creds, standin, params, openid)
    return standin.pay(facts.out_trade_no, openid=openid)


def _signature_ok(creds: SandboxCredentials, params: dict[str, Any]) -> bool:
    fields = ("appId", "timeStamp", "nonceStr", "package")
    message = "".join(f"{params.get(name)}\n" for name in fields)
    key = serialization.load_pem_public_key(creds.merchant_public_key_file.read_bytes())
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    try:
        key.verify(base64.b64decode(str(params.get("paySign") or "")), message.encode(),
                   padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True
