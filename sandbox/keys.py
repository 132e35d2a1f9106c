"""Sandbox credentials, generated on first use under ``instance/sandbox/`` and reused afterwards.

Everything a real deployment gets from the WeChat and WeChat Pay consoles is minted here: the
Official Account's appid/secret/token/EncodingAESKey, the merchant's API key pair and certificate
serial, the APIv3 key, and WeChat Pay's own signing key (exposed both as a public key with a
``PUB_KEY_ID_…`` id and as a self-signed platform certificate). The directory is git-ignored.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import string
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

_ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True)
class SandboxCredentials:
    directory: Path
    app_id: str
    app_secret: str
    token: str
    encoding_aes_key: str
    original_id: str
    mch_id: str
    apiv3_key: str
    merchant_private_key_file: Path
    merchant_cert_serial_no: str
    merchant_public_key_file: Path
    platform_private_key_file: Path
    platform_public_key_file: Path
    platform_public_key_id: str
    platform_cert_file: Path
    platform_cert_serial_no: str

    def read(self, path: Path) -> str:
        return path.read_text()


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_private(path: Path, key: rsa.RSAPrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    os.chmod(path, 0o600)


def _write_public(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _self_signed(key: rsa.RSAPrivateKey, common_name: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )


def generate(directory: Path) -> SandboxCredentials:
    """Create a fresh set of credentials in ``directory`` (overwriting what is there)."""
    directory.mkdir(parents=True, exist_ok=True)
    merchant = _new_key()
    platform = _new_key()
    merchant_cert = _self_signed(merchant, "RenoPay Sandbox Merchant")
    platform_cert = _self_signed(platform, "Tenpay.com Sandbox Platform")
    _write_private(directory / "merchant_private_key.pem", merchant)
    _write_public(directory / "merchant_public_key.pem", merchant)
    _write_private(directory / "platform_private_key.pem", platform)
    _write_public(directory / "platform_public_key.pem", platform)
    (directory / "platform_cert.pem").write_bytes(platform_cert.public_bytes(serialization.Encoding.PEM))
    meta = {
        "app_id": "wx" + secrets.token_hex(8),
        "app_secret": secrets.token_hex(16),
        "token": _random(24),
        "encoding_aes_key": _random(43),
        "original_id": "gh_" + secrets.token_hex(6),
        "mch_id": "19" + "".join(secrets.choice(string.digits) for _ in range(8)),
        "apiv3_key": _random(32),
        "merchant_cert_serial_no": format(merchant_cert.serial_number, "X"),
        "platform_public_key_id": "PUB_KEY_ID_" + "".join(secrets.choice(string.digits) for _ in range(32)),
        "platform_cert_serial_no": format(platform_cert.serial_number, "X"),
    }
    meta_path = directory / "credentials.json"
    meta_path.write_text(json.dumps(meta, indent=2))
    os.chmod(meta_path, 0o600)
    return load(directory)


def load(directory: Path) -> SandboxCredentials:
    meta = json.loads((directory / "credentials.json").read_text())
    return SandboxCredentials(
        directory=directory,
        merchant_private_key_file=directory / "merchant_private_key.pem",
        merchant_public_key_file=directory / "merchant_public_key.pem",
        platform_private_key_file=directory / "platform_private_key.pem",
        platform_public_key_file=directory / "platform_public_key.pem",
        platform_cert_file=directory / "platform_cert.pem",
        **meta,
    )


def ensure(directory: Path | str) -> SandboxCredentials:
    """Load the credentials in ``directory``, generating them on first use."""
    directory = Path(directory)
    if (directory / "credentials.json").exists():
        return load(directory)
    return generate(directory)
