"""One typed Settings object, read once from the environment (and `.env`), validated at start.

Everything a deployment configures lives here; nothing else reads ``os.environ``. Validation errors
are collected and raised together, so an operator sees every problem in one start-up.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

DEV_SECRET_KEYS = frozenset({"", "dev", "change-me", "secret", "sandbox-dev-secret"})
DEFAULT_DATABASE_URL = "sqlite:///instance/renopay.sqlite3"


class ConfigError(Exception):
    """Raised at start-up when the configuration cannot work; lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("RenoPay configuration is invalid:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    secret_key: str = ""
    public_base_url: str = "http://127.0.0.1:5000"
    sandbox: bool = True
    instance_path: str = "instance"

    wechat_app_id: str = ""
    wechat_app_secret: str = ""
    wechat_token: str = ""
    wechat_encoding_aes_key: str = ""
    wechat_original_id: str = ""
    wechat_api_base: str = "https://api.weixin.qq.com"
    wechat_oauth_base: str = "https://open.weixin.qq.com"

    wechatpay_mch_id: str = ""
    wechatpay_apiv3_key: str = ""
    wechatpay_private_key_file: str = ""
    wechatpay_cert_serial_no: str = ""
    wechatpay_public_key_file: str = ""
    wechatpay_public_key_id: str = ""
    wechatpay_cert_dir: str = ""
    wechatpay_api_base: str = "https://api.mch.weixin.qq.com"

    erp_webhook_url: str = ""
    erp_webhook_secrets: tuple[str, ...] = ()
    erp_api_key: str = ""

    # Structured settings from instance/renopay.toml (see docs/configuration.md).
    max_bill_fen: int = 100_000_000  # ¥1,000,000.00 per bill
    min_partial_payment_fen: int = 100  # ¥1.00
    attempt_ttl_minutes: int = 120
    pay_link_ttl_days: int = 90
    company_name: str = "RenoPay 装修有限公司"
    company_seal_text: str = "财务专用章"
    templates: Mapping[str, Any] = field(default_factory=dict)
    scheduler_enabled: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def erp_webhook_secret(self) -> str:
        return self.erp_webhook_secrets[0] if self.erp_webhook_secrets else ""

    @property
    def wechatpay_mode(self) -> str:
        return "public_key" if self.wechatpay_public_key_id else "certificate"

    def with_overrides(self, **values: Any) -> Settings:
        return replace(self, **values)


_ENV_MAP = {
    "DATABASE_URL": "database_url",
    "REDIS_URL": "redis_url",
    "SECRET_KEY": "secret_key",
    "PUBLIC_BASE_URL": "public_base_url",
    "WECHAT_APP_ID": "wechat_app_id",
    "WECHAT_APP_SECRET": "wechat_app_secret",
    "WECHAT_TOKEN": "wechat_token",
    "WECHAT_ENCODING_AES_KEY": "wechat_encoding_aes_key",
    "WECHAT_ORIGINAL_ID": "wechat_original_id",
    "WECHAT_API_BASE": "wechat_api_base",
    "WECHAT_OAUTH_BASE": "wechat_oauth_base",
    "WECHATPAY_MCH_ID": "wechatpay_mch_id",
    "WECHATPAY_APIV3_KEY": "wechatpay_apiv3_key",
    "WECHATPAY_PRIVATE_KEY_FILE": "wechatpay_private_key_file",
    "WECHATPAY_CERT_SERIAL_NO": "wechatpay_cert_serial_no",
    "WECHATPAY_PUBLIC_KEY_FILE": "wechatpay_public_key_file",
    "WECHATPAY_PUBLIC_KEY_ID": "wechatpay_public_key_id",
    "WECHATPAY_CERT_DIR": "wechatpay_cert_dir",
    "WECHATPAY_API_BASE": "wechatpay_api_base",
    "ERP_WEBHOOK_URL": "erp_webhook_url",
    "ERP_API_KEY": "erp_api_key",
    "RENOPAY_INSTANCE_PATH": "instance_path",
}

_TOML_KEYS = {
    "max_bill_fen",
    "min_partial_payment_fen",
    "attempt_ttl_minutes",
    "pay_link_ttl_days",
    "company_name",
    "company_seal_text",
    "templates",
    "scheduler_enabled",
}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _read_dotenv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def load_settings(
    environ: Mapping[str, str] | None = None, *, dotenv: Path | None = Path(".env")
) -> Settings:
    """Build Settings from ``.env`` (lowest), ``instance/renopay.toml``, then the environment."""
    env: dict[str, str] = {}
    if dotenv is not None:
        env.update(_read_dotenv(dotenv))
    env.update(os.environ if environ is None else environ)

    values: dict[str, Any] = {}
    for name, attr in _ENV_MAP.items():
        if env.get(name, "").strip():
            values[attr] = env[name].strip()
    if env.get("ERP_WEBHOOK_SECRET", "").strip():
        values["erp_webhook_secrets"] = tuple(
            s.strip() for s in env["ERP_WEBHOOK_SECRET"].split(",") if s.strip()
        )
    values["sandbox"] = _truthy(env.get("RENOPAY_SANDBOX")) or not values.get("wechat_app_id")
    if "RENOPAY_SCHEDULER" in env:
        values["scheduler_enabled"] = _truthy(env["RENOPAY_SCHEDULER"])

    instance = Path(values.get("instance_path", "instance"))
    toml_path = instance / "renopay.toml"
    if toml_path.is_file():
        with toml_path.open("rb") as fh:
            structured = tomllib.load(fh)
        unknown = set(structured) - _TOML_KEYS
        if unknown:
            raise ConfigError([f"{toml_path}: unknown keys {sorted(unknown)} (see docs/configuration.md)"])
        for key, value in structured.items():
            values.setdefault(key, value)
    return Settings(**values)


def validate(settings: Settings) -> list[str]:
    """Return every problem that would make this configuration unsafe or unworkable."""
    problems: list[str] = []
    if settings.max_bill_fen <= 0 or settings.min_partial_payment_fen <= 0:
        problems.append("max_bill_fen and min_partial_payment_fen must be positive")
    if settings.sandbox:
        return problems
    if settings.secret_key in DEV_SECRET_KEYS or len(settings.secret_key) < 32:
        problems.append("SECRET_KEY must be a random value of at least 32 characters outside sandbox")
    if urlparse(settings.public_base_url).scheme != "https":
        problems.append("PUBLIC_BASE_URL must be an https origin outside sandbox")
    required = {
        "WECHAT_APP_SECRET": settings.wechat_app_secret,
        "WECHAT_TOKEN": settings.wechat_token,
        "WECHATPAY_MCH_ID": settings.wechatpay_mch_id,
        "WECHATPAY_CERT_SERIAL_NO": settings.wechatpay_cert_serial_no,
    }
    problems += [f"{name} is required outside sandbox" for name, value in required.items() if not value]
    if settings.wechat_encoding_aes_key and len(settings.wechat_encoding_aes_key) != 43:
        problems.append("WECHAT_ENCODING_AES_KEY must be exactly 43 characters")
    if len(settings.wechatpay_apiv3_key.encode()) != 32:
        problems.append("WECHATPAY_APIV3_KEY must be exactly 32 bytes")
    problems += _check_pem(
        "WECHATPAY_PRIVATE_KEY_FILE", settings.wechatpay_private_key_file, private=True, required=True
    )
    if settings.wechatpay_public_key_id:
        if not settings.wechatpay_public_key_id.startswith("PUB_KEY_ID_"):
            problems.append("WECHATPAY_PUBLIC_KEY_ID must start with PUB_KEY_ID_")
        problems += _check_pem(
            "WECHATPAY_PUBLIC_KEY_FILE", settings.wechatpay_public_key_file, private=False, required=True
        )
    for secret in settings.erp_webhook_secrets:
        if len(secret) < 16:
            problems.append("each ERP_WEBHOOK_SECRET must be at least 16 characters")
    if settings.erp_api_key and len(settings.erp_api_key) < 16:
        problems.append("ERP_API_KEY must be at least 16 characters")
    return problems


def _check_pem(name: str, path: str, *, private: bool, required: bool) -> list[str]:
    if not path:
        return [f"{name} is required outside sandbox"] if required else []
    from cryptography.hazmat.primitives import serialization

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return [f"{name}: cannot read {path} ({exc.strerror})"]
    try:
        if private:
            if b"BEGIN PRIVATE KEY" not in data:
                return [f"{name}: the merchant key must be PKCS#8 (BEGIN PRIVATE KEY)"]
            serialization.load_pem_private_key(data, password=None)
        else:
            serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        return [f"{name}: {path} is not a loadable PEM key"]
    return []


def settings_names() -> list[str]:
    return [f.name for f in fields(Settings)]


def current_settings() -> Settings:
    """The Settings of the running app (inside an app context)."""
    from flask import current_app

    return current_app.extensions["renopay.settings"]  # type: ignore[no-any-return]
