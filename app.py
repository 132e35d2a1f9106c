"""The composition root: ``create_app(config=None)`` builds settings, the database, blueprints, CLI,
the scheduler and the real-or-sandbox adapters. Nothing imports this module.

Production: ``flask --app app db upgrade``; ``gunicorn 'app:create_app()'``; one ``flask --app app worker``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from flask import Flask, jsonify

import config as config_module
import observability
from config import ConfigError, Settings, load_settings, validate
from db import Database, current_db
from payments.links import Links

log = logging.getLogger("renopay")

MAX_CONTENT_LENGTH = 256 * 1024  # WeChat pushes and ERP calls are small; cap every body


def create_app(config: Settings | Mapping[str, Any] | None = None) -> Flask:
    settings = _resolve_settings(config)
    if settings.sandbox:
        settings = _sandbox_settings(settings)
    problems = validate(settings)
    if problems:
        raise ConfigError(problems)

    app = Flask(__name__, instance_path=str(Path(settings.instance_path).resolve()))
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=MAX_CONTENT_LENGTH,
        JSON_AS_ASCII=False,
    )
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    database = Database.from_url(settings.database_url)
    app.extensions["renopay.settings"] = settings
    app.extensions["renopay.db"] = database

    app.extensions["renopay.links"] = Links(
        settings.secret_key, settings.public_base_url, settings.pay_link_ttl_days
    )
    observability.init_app(app, settings.redis_url, settings.wechat_app_id)
    app.add_url_rule("/healthz", "healthz", _healthz)
    _register_cli(app)
    _register_features(app, settings)
    if settings.sandbox:
        _mount_sandbox(app, settings)
    return app


def _resolve_settings(config: Settings | Mapping[str, Any] | None) -> Settings:
    if isinstance(config, Settings):
        return config
    settings = load_settings()
    if config:
        settings = settings.with_overrides(**dict(config))
    return settings


def _sandbox_settings(settings: Settings) -> Settings:
    """Fill unset WeChat settings with sandbox credentials and the in-process stand-ins' URLs."""
    from sandbox import erp_receiver, keys

    creds = keys.ensure(Path(settings.instance_path) / "sandbox")
    base = settings.public_base_url.rstrip("/")
    defaults: dict[str, Any] = {
        "secret_key": settings.secret_key or "sandbox-dev-secret",
        "wechat_app_id": creds.app_id,
        "wechat_app_secret": creds.app_secret,
        "wechat_token": creds.token,
        "wechat_encoding_aes_key": creds.encoding_aes_key,
        "wechat_original_id": creds.original_id,
        "wechatpay_mch_id": creds.mch_id,
        "wechatpay_apiv3_key": creds.apiv3_key,
        "wechatpay_private_key_file": str(creds.merchant_private_key_file),
        "wechatpay_cert_serial_no": creds.merchant_cert_serial_no,
        "wechatpay_public_key_file": str(creds.platform_public_key_file),
        "wechatpay_public_key_id": creds.platform_public_key_id,
    }
    values = {k: v for k, v in defaults.items() if not getattr(settings, k)}
    if settings.wechat_api_base == Settings.wechat_api_base:
        values["wechat_api_base"] = f"{base}/sandbox/wechat-api"
    if settings.wechat_oauth_base == Settings.wechat_oauth_base:
        values["wechat_oauth_base"] = f"{base}/sandbox/wechat-api"
    if settings.wechatpay_api_base == Settings.wechatpay_api_base:
        values["wechatpay_api_base"] = f"{base}/sandbox/wechatpay"
    if not settings.erp_webhook_url and not settings.erp_webhook_secrets:  # the built-in ERP receiver
        values.update(erp_webhook_url=f"{base}/sandbox/erp/events",
                      erp_webhook_secrets=(erp_receiver.SANDBOX_SECRET,))
    return settings.with_overrides(**values)


def _mount_sandbox(app: Flask, settings: Settings) -> None:
    """Mount the stand-ins on this app's own port when the settings point at them. They are still
    reached over HTTP (the server must be threaded), exactly as the real WeChat APIs would be."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from sandbox import keys, wechat_api, wechatpay

    creds = keys.ensure(Path(settings.instance_path) / "sandbox")
    base = settings.public_base_url.rstrip("/")
    mounts: dict[str, Any] = {}
    if settings.wechatpay_api_base == f"{base}/sandbox/wechatpay":
        mounts["/sandbox/wechatpay"] = wechatpay.create_app(creds)
    if settings.wechat_api_base == f"{base}/sandbox/wechat-api":
        mounts["/sandbox/wechat-api"] = wechat_api.create_app(creds, push_target=f"{base}/wechat")
    app.extensions["renopay.sandbox_mounts"] = mounts
    if mounts:
        app.wsgi_app = DispatcherMiddleware(app.wsgi_app, mounts)  # type: ignore[method-assign]
    import sandbox.simulator; sandbox.simulator.init_app(app)  # noqa: E702, I001 - chat simulator, ERP receiver


def _healthz() -> Any:
    try:
        current_db().ping()
    except Exception as exc:  # any driver error means "not ready"; the type is logged, not shown
        log.warning("healthz: database unreachable (%s)", type(exc).__name__)
        return jsonify(status="unavailable", database="unreachable"), 503
    settings = config_module.current_settings()
    return jsonify(status="ok", database="ok", sandbox=settings.sandbox)


def _register_features(app: Flask, settings: Settings) -> None:
    """Each feature package exposes ``init_app(app)``; the order here is the wiring order."""
    import erp_sync; erp_sync.init_app(app)  # noqa: E702, I001 - one line per feature
    import payments; payments.init_app(app)  # noqa: E702, I001 - one line per feature
    import payments.receipts; payments.receipts.init_app(app)  # noqa: E702, I001 - one line per feature
    import bot; bot.init_app(app)  # noqa: E702, I001 - one line per feature
    import handlers; handlers.init_app(app)  # noqa: E702, I001 - one line per feature


def _register_cli(app: Flask) -> None:
    @app.cli.group("db")
    def db_group() -> None:
        """Database migrations (Alembic)."""

    @db_group.command("upgrade")
    @click.argument("revision", default="heads")
    def db_upgrade(revision: str) -> None:
        """Apply migrations up to REVISION (default: every head)."""
        from migrations.runner import upgrade

        upgrade(config_module.current_settings().database_url, revision)
        click.echo(f"database upgraded to {revision}")

    @db_group.command("downgrade")
    @click.argument("revision", default="-1")
    def db_downgrade(revision: str) -> None:
        """Revert migrations down to REVISION (default: one step)."""
        from migrations.runner import downgrade

        downgrade(config_module.current_settings().database_url, revision)
        click.echo(f"database downgraded to {revision}")

    @db_group.command("current")
    def db_current() -> None:
        """Show the applied revision."""
        from migrations.runner import current

        click.echo(current(config_module.current_settings().database_url) or "(empty)")
