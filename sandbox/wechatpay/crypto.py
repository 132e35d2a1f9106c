"""Wire cryptography of WeChat Pay APIv3, seen from WeChat's side.

- verify the merchant's ``Authorization: WECHATPAY2-SHA256-RSA2048 …`` header (merchant key);
- sign responses and callbacks with the platform key (``TS\\nNONCE\\nBODY\\n``);
- AES-256-GCM encrypt callback resources and the platform certificate with the APIv3 key.
"""

from __future__ import annotations

import base64
import re
import secrets
import string
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from sandbox.keys import SandboxCredentials

SCHEME = "WECHATPAY2-SHA256-RSA2048"
SIGNTEST_PREFIX = "WECHATPAY/SIGNTEST/"
# WeChat rejects requests whose timestamp is too far from its own clock.
MAX_CLOCK_SKEW = 300
_AUTH_PARAM = re.compile(r'\s*(\w+)="([^"]*)"\s*')
_ALNUM = string.ascii_letters + string.digits


def nonce(n: int = 32) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


class AuthError(Exception):
    """The merchant's Authorization header is missing, malformed or does not verify."""


@dataclass(frozen=True)
class Authorization:
    mchid: str
    nonce_str: str
    signature: str
    timestamp: str
    serial_no: str


def parse_authorization(header: str | None) -> Authorization:
    if not header:
        raise AuthError("缺少Authorization请求头")
    scheme, _, params = header.strip().partition(" ")
    if scheme != SCHEME:
        raise AuthError("不支持的签名认证类型")
    values: dict[str, str] = {}
    for part in params.split(","):
        match = _AUTH_PARAM.fullmatch(part)
        if not match:
            raise AuthError("Authorization格式错误")
        values[match.group(1)] = match.group(2)
    try:
        return Authorization(
            **{k: values[k] for k in ("mchid", "nonce_str", "signature", "timestamp", "serial_no")}
        )
    except KeyError as missing:
        raise AuthError(f"Authorization缺少参数 {missing.args[0]}") from None


class Crypto:
    """Key material of one sandbox merchant and of the stand-in's own platform key."""

    def __init__(self, credentials: SandboxCredentials):
        self.credentials = credentials
        self.apiv3_key = credentials.apiv3_key.encode()
        key = load_pem_private_key(credentials.platform_private_key_file.read_bytes(), password=None)
        merchant = load_pem_public_key(credentials.merchant_public_key_file.read_bytes())
        assert isinstance(key, RSAPrivateKey) and isinstance(merchant, RSAPublicKey)
        self._platform_key = key
        self._merchant_public_key = merchant
        self.platform_cert_pem = credentials.platform_cert_file.read_text()

    # -- merchant requests -------------------------------------------------------------------------
    def verify_request(self, method: str, url: str, body: str, header: str | None) -> Authorization:
        """Check an Authorization header over ``METHOD\\nURL\\nTS\\nNONCE\\nBODY\\n`` (raw URL and body)."""
        auth = parse_authorization(header)
        if auth.mchid != self.credentials.mch_id:
            raise AuthError("商户号与签名不匹配")
        if auth.serial_no.upper() != self.credentials.merchant_cert_serial_no.upper():
            raise AuthError("商户证书序列号有误")
        try:
            skew = abs(time.time() - int(auth.timestamp))
        except ValueError:
            raise AuthError("时间戳格式错误") from None
        if skew > MAX_CLOCK_SKEW:
            raise AuthError("请求时间戳与服务器时间差距过大")
        message = f"{method}\n{url}\n{auth.timestamp}\n{auth.nonce_str}\n{body}\n".encode()
        try:
            signature = base64.b64decode(auth.signature, validate=True)
            self._merchant_public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            raise AuthError("签名错误") from None
        return auth

    # -- our signatures ----------------------------------------------------------------------------
    def sign(self, timestamp: str, nonce_str: str, body: str) -> str:
        message = f"{timestamp}\n{nonce_str}\n{body}\n".encode()
        return base64.b64encode(
            self._platform_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        ).decode()

    def signature_headers(self, body: str, serial: str, *, signtest: bool = False) -> dict[str, str]:
        """The ``Wechatpay-*`` headers WeChat puts on responses and callbacks."""
        timestamp, nonce_str = str(int(time.time())), nonce(32)
        signature = self.sign(timestamp, nonce_str, body)
        if signtest:
            # A signature probe: a deliberately invalid signature marked the way WeChat marks it.
            signature = SIGNTEST_PREFIX + base64.b64encode(secrets.token_bytes(200)).decode()
        return {
            "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": nonce_str,
            "Wechatpay-Signature": signature,
            "Wechatpay-Serial": serial,
            "Wechatpay-Signature-Type": SCHEME,
        }

    # -- AES-256-GCM with the APIv3 key ------------------------------------------------------------
    def encrypt(self, plaintext: str, associated_data: str) -> dict[str, str]:
        nonce_str = nonce(12)
        ciphertext = AESGCM(self.apiv3_key).encrypt(
            nonce_str.encode(), plaintext.encode(), associated_data.encode()
        )
        return {
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": base64.b64encode(ciphertext).decode(),
            "associated_data": associated_data,
            "nonce": nonce_str,
        }

    def decrypt(self, resource: dict[str, str]) -> str:
        """Inverse of :meth:`encrypt` (used by tests and the control API's debugging views)."""
        data = base64.b64decode(resource["ciphertext"])
        aad = resource.get("associated_data", "").encode()
        return AESGCM(self.apiv3_key).decrypt(resource["nonce"].encode(), data, aad).decode()
