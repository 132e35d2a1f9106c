"""The webhook signature of the contract: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>."""

from __future__ import annotations

import hashlib
import hmac

from erp_sync.webhook import ErpWebhook, encode_body, signature_header, verify_signature

BODY = encode_body(
    {"id": "evt_1", "type": "bill.opened", "bill": {"number": "B2611-0001", "stage": "首期款"}}
)


def test_signature_is_hmac_sha256_of_timestamp_dot_raw_body():
    expected = hmac.new(b"s3cret-0123456789", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert signature_header("s3cret-0123456789", 1700000000, BODY) == f"t=1700000000,v1={expected}"


def test_body_is_compact_utf8_json_so_chinese_is_not_escaped():
    assert "首期款".encode() in BODY
    assert b", " not in BODY


def test_receiver_accepts_either_secret_during_rotation():
    header = signature_header("old-secret-0123456789", 1700000000, BODY)
    assert verify_signature(header, BODY, ["new-secret-0123456789", "old-secret-0123456789"], now=1700000010)
    assert not verify_signature(header, BODY, ["new-secret-0123456789"], now=1700000010)


def test_receiver_rejects_tampered_body_stale_timestamp_and_garbage():
    header = signature_header("k-0123456789abcdef", 1700000000, BODY)
    assert not verify_signature(header, BODY + b" ", ["k-0123456789abcdef"], now=1700000000)
    assert not verify_signature(header, BODY, ["k-0123456789abcdef"], now=1700000000 + 301)
    assert not verify_signature("t=abc,v1=00", BODY, ["k-0123456789abcdef"], now=1700000000)
    assert not verify_signature("", BODY, ["k-0123456789abcdef"], now=1700000000)


def test_webhook_signs_with_the_first_secret_and_sends_the_event_id_as_idempotency_key():
    hook = ErpWebhook("http://erp.invalid/hook", ["new-secret-0123456789", "old-secret-0123456789"],
                      clock=lambda: 1700000000)
    headers = hook.headers_for({"id": "evt_1"}, BODY)
    assert headers["Idempotency-Key"] == "evt_1"
    assert headers["RenoPay-Signature"] == signature_header("new-secret-0123456789", 1700000000, BODY)


def test_webhook_without_url_or_secret_is_not_ready_and_says_why():
    assert "ERP_WEBHOOK_URL" in (ErpWebhook("", ["x" * 16]).not_ready_reason() or "")
    assert "ERP_WEBHOOK_SECRET" in (ErpWebhook("http://erp/hook", []).not_ready_reason() or "")
    assert ErpWebhook("http://erp/hook", ["x" * 16]).not_ready_reason() is None
