"""Slow chat work run after the reply (see bot/tasks.py): QR images sent as customer-service messages."""

from __future__ import annotations

import io
from typing import Any

import qrcode

from bot import wechat_client
from bot.tasks import register_task
from db import current_db
from payments.errors import DomainError
from payments.models import Channel

INVITE_QR_SECONDS = 30 * 86400


def qr_png(data: str) -> bytes:
    buffer = io.BytesIO()
    qrcode.make(data, box_size=8, border=2).save(buffer)
    return buffer.getvalue()


def send_invite_qr(openid: str, payload: dict[str, str]) -> None:
    """A parametric QR for ``payload['scene']``: scanning it follows the account and binds the customer."""
    client = wechat_client()
    code = client.create_qr_scene(payload["scene"], expire_seconds=INVITE_QR_SECONDS)
    media_id = client.upload_image(qr_png(code.url), "invite.png")
    client.send_custom_image(openid, media_id)
    client.send_custom_text(
        openid,
        f"请让客户 {payload['customer']} 用微信扫描上面的二维码，关注公众号后即完成绑定（30 天内有效）。\n"
        f"二维码链接：{code.image_url}",
    )


def send_pay_qr(openid: str, payload: dict[str, Any]) -> None:
    """The bill's Native-pay QR (its WeChat Pay code_url) for a customer on site."""
    from payments import runtime
    from payments.checkout import open_attempt
    from payments.qr import qr_png as native_png

    client = wechat_client()
    try:
        opened = open_attempt(current_db(), runtime.gateway(), runtime.checkout_policy(),
                              int(payload["bill_id"]), channel=Channel.native)
    except DomainError as exc:  # not payable any more, or WeChat Pay refused: tell the staff member
        client.send_custom_text(openid, f"{payload['number']}：{exc.message}")
        return
    assert opened.code_url is not None
    media_id = client.upload_image(native_png(opened.code_url), f"{payload['number']}.png")
    client.send_custom_image(openid, media_id)
    client.send_custom_text(openid, f"收款码：{payload['line']}\n请客户用微信扫一扫付款。")


def register() -> None:
    register_task("invite_qr", send_invite_qr)
    register_task("pay_qr", send_pay_qr)
