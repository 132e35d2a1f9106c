"""The Official Account menu and ``flask --app app menu push``."""

from __future__ import annotations

import click
from flask import Flask

MY_BILLS = "MY_BILLS"
PAY_HELP = "PAY_HELP"
CONTACT_SERVICE = "CONTACT_SERVICE"

MENU = {
    "button": [
        {"type": "click", "name": "我的账单", "key": MY_BILLS},
        {"type": "click", "name": "支付帮助", "key": PAY_HELP},
        {"type": "click", "name": "联系客服", "key": CONTACT_SERVICE},
    ]
}


def register_cli(app: Flask) -> None:
    @app.cli.group("menu")
    def menu_group() -> None:
        """The Official Account menu."""

    @menu_group.command("push")
    def menu_push() -> None:
        """Install the menu (我的账单 / 支付帮助 / 联系客服) through the Official Account API."""
        from bot import wechat_client
        from bot.client import WeChatApiError

        try:
            wechat_client().create_menu(MENU)
        except WeChatApiError as exc:
            raise click.ClickException(f"menu not installed: {exc}") from exc
        click.echo("menu installed: " + " / ".join(b["name"] for b in MENU["button"]))
