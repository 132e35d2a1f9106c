"""Pay and receipt links: signed, stable within a day, expiring, and refused when tampered with."""

from __future__ import annotations

import time

import pytest

from payments.links import LinkInvalid, Links

LINKS = Links("k" * 40, "https://pay.example.com", pay_ttl_days=90)


def test_a_bills_link_is_the_same_all_day_and_opens_its_bill(monkeypatch) -> None:
    morning = 1_795_000_000 // 86_400 * 86_400 + 60  # one minute past midnight UTC
    monkeypatch.setattr(time, "time", lambda: morning)
    first = LINKS.pay_url("B2611-0042")
    monkeypatch.setattr(time, "time", lambda: morning + 86_000)
    assert LINKS.pay_url("B2611-0042") == first
    assert LINKS.bill_number_from_pay_token(first.rsplit("/", 1)[1]) == "B2611-0042"


def test_a_link_expires_after_its_days_and_a_tampered_one_is_refused(monkeypatch) -> None:
    now = 1_795_000_000
    monkeypatch.setattr(time, "time", lambda: now)
    token = LINKS.pay_token("B2611-0042")
    monkeypatch.setattr(time, "time", lambda: now + 92 * 86_400)
    with pytest.raises(LinkInvalid) as excinfo:
        LINKS.bill_number_from_pay_token(token)
    assert excinfo.value.expired
    with pytest.raises(LinkInvalid) as excinfo:
        LINKS.bill_number_from_pay_token(token[:-2] + "xx")
    assert not excinfo.value.expired
    with pytest.raises(LinkInvalid):
        Links("other" * 8, "https://pay.example.com").bill_number_from_pay_token(LINKS.pay_token("B1"))


def test_receipt_links_and_verification_codes_are_stable() -> None:
    url = LINKS.receipt_url("R2611-00001")
    assert LINKS.receipt_no_from_token(url.rsplit("/", 1)[1]) == "R2611-00001"
    assert LINKS.verification_code("R2611-00001") == LINKS.verification_code("R2611-00001")
    assert len(LINKS.verification_code("R2611-00001")) == 8
