"""Money: models, use cases, the WeChat Pay gateway, the pay page and the notify endpoint.

``init_app(app)`` builds the gateway from settings into ``app.extensions["renopay.wechatpay"]``,
registers the pay-page and notify blueprints and adds ``flask --app app payments recover``.
"""

from __future__ import annotations

from typing import Any

import click
from flask import Flask
from flask.cli import AppGroup


def init_app(app: Flask) -> None:
    from payments import notify, paypage, reconcile_cli, runtime
    from payments.money import chinese_capital, format_fen
    from payments.wechatpay import WeChatPayGateway, config_from_settings

    settings = app.extensions["renopay.settings"]
    if runtime.GATEWAY_KEY not in app.extensions:  # tests may inject a gateway built their own way

        def build() -> WeChatPayGateway:
            return WeChatPayGateway(config_from_settings(settings))

        # Public-key mode makes no network call: build now. Certificate mode may download certificates
        # at construction, and an app (a CLI command) must start while WeChat Pay is unreachable: build
        # on first use (runtime.gateway()).
        app.extensions[runtime.GATEWAY_KEY] = build() if settings.wechatpay_public_key_id else build
    if runtime.OAUTH_KEY not in app.extensions:
        app.extensions[runtime.OAUTH_KEY] = _oauth_client(settings)
    app.register_blueprint(notify.bp)
    app.register_blueprint(paypage.bp)
    app.register_blueprint(paypage.static_bp)
    app.add_template_filter(format_fen, "fen")
    app.add_template_filter(chinese_capital, "fen_capital")
    app.cli.add_command(payments_cli)
    reconcile_cli.register(app)  # flask --app app reconcile / report


def _oauth_client(settings: Any) -> Any:
    # bot/client.py owns wechatpy; the pay page borrows only its OAuth helper (ARCHITECTURE, imports).
    from bot.client import WeChatApiClient

    return WeChatApiClient(
        settings.wechat_app_id,
        settings.wechat_app_secret,
        api_base=settings.wechat_api_base,
        oauth_base=settings.wechat_oauth_base,
    )


@click.group("payments", cls=AppGroup)
def payments_cli() -> None:
    """WeChat Pay recovery and maintenance."""


@payments_cli.command("recover")
@click.option("--quiet", is_flag=True, help="Print only the summary.")
def recover(quiet: bool) -> None:
    """Query pending attempts, close stale ones at WeChat, send due refunds."""
    from db import current_db
    from payments.recovery import run_all
    from payments.runtime import gateway

    report = run_all(current_db(), gateway(), progress=None if quiet else click.echo)
    click.echo(
        f"checked {report.checked}, applied {report.applied}, closed {report.closed}, "
        f"expired {report.expired}, refunds sent {report.refunds_sent}, errors {len(report.errors)}"
    )
    for error in report.errors:
        click.echo(f"  error: {error}", err=True)
