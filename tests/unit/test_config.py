"""Settings: read from the environment, validated at start with every problem listed."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app import create_app
from config import ConfigError, load_settings, validate


def _env(tmp_path, **extra: str) -> dict[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "apiclient_key.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pub = tmp_path / "pub.pem"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    env = {
        "RENOPAY_INSTANCE_PATH": str(tmp_path),
        "WECHAT_APP_ID": "wx1234567890abcdef",
        "WECHAT_APP_SECRET": "s" * 32,
        "WECHAT_TOKEN": "token123",
        "WECHAT_ENCODING_AES_KEY": "a" * 43,
        "WECHATPAY_MCH_ID": "1900000109",
        "WECHATPAY_APIV3_KEY": "k" * 32,
        "WECHATPAY_PRIVATE_KEY_FILE": str(pem),
        "WECHATPAY_CERT_SERIAL_NO": "ABCDEF0123",
        "WECHATPAY_PUBLIC_KEY_FILE": str(pub),
        "WECHATPAY_PUBLIC_KEY_ID": "PUB_KEY_ID_0123456789",
        "SECRET_KEY": "x" * 40,
        "PUBLIC_BASE_URL": "https://pay.example.com",
        "ERP_WEBHOOK_SECRET": "first-secret-0123456789,second-secret-0123456789",
    }
    env.update(extra)
    return env


def test_sandbox_is_on_without_an_app_id_and_off_with_one(tmp_path):
    assert load_settings({"RENOPAY_INSTANCE_PATH": str(tmp_path)}, dotenv=None).sandbox
    settings = load_settings(_env(tmp_path), dotenv=None)
    assert not settings.sandbox
    assert validate(settings) == []
    assert settings.erp_webhook_secrets == ("first-secret-0123456789", "second-secret-0123456789")
    assert load_settings(_env(tmp_path, RENOPAY_SANDBOX="1"), dotenv=None).sandbox


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"SECRET_KEY": "dev"}, "SECRET_KEY"),
        ({"PUBLIC_BASE_URL": "http://pay.example.com"}, "https"),
        ({"WECHAT_ENCODING_AES_KEY": "short"}, "43"),
        ({"WECHATPAY_APIV3_KEY": "k" * 31}, "32 bytes"),
        ({"WECHATPAY_PRIVATE_KEY_FILE": "/nonexistent/key.pem"}, "cannot read"),
        ({"WECHATPAY_PUBLIC_KEY_ID": "12345"}, "PUB_KEY_ID_"),
        ({"ERP_WEBHOOK_SECRET": "short"}, "ERP_WEBHOOK_SECRET"),
    ],
)
def test_each_unsafe_setting_is_reported(tmp_path, override, problem):
    problems = validate(load_settings(_env(tmp_path, **override), dotenv=None))
    assert any(problem in p for p in problems), problems


def test_a_pkcs1_private_key_is_refused_with_the_reason(tmp_path):
    env = _env(tmp_path)
    pem = tmp_path / "pkcs1.pem"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    env["WECHATPAY_PRIVATE_KEY_FILE"] = str(pem)
    assert any("PKCS#8" in p for p in validate(load_settings(env, dotenv=None)))


def test_create_app_refuses_to_start_and_lists_every_problem(tmp_path, monkeypatch):
    for name, value in _env(tmp_path, SECRET_KEY="dev", PUBLIC_BASE_URL="http://x").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as excinfo:
        create_app()
    assert len(excinfo.value.problems) == 2


def test_renopay_toml_unknown_keys_are_refused(tmp_path):
    (tmp_path / "renopay.toml").write_text("max_bill_fen = 5\nmystery = 1\n")
    with pytest.raises(ConfigError, match="mystery"):
        load_settings({"RENOPAY_INSTANCE_PATH": str(tmp_path)}, dotenv=None)
    (tmp_path / "renopay.toml").write_text('max_bill_fen = 5\ncompany_name = "好家装饰"\n')
    settings = load_settings({"RENOPAY_INSTANCE_PATH": str(tmp_path)}, dotenv=None)
    assert (settings.max_bill_fen, settings.company_name) == (5, "好家装饰")
