"""Template values are normalised to the category-template rules before sending (no 47003 for our
data), and a bad template configuration is refused at start."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot import notice_templates as nt
from bot.notice_content import DEAD_LETTER_TOPIC, NoDirectory, custom_text, plan, values
from sandbox.wechat_api import rules

ANY_TEXT = st.text(max_size=80) | st.none()


@given(title=ANY_TEXT, number=ANY_TEXT, reason=ANY_TEXT, fen=st.integers(-10**15, 10**15))
def test_every_default_template_renders_values_the_stand_in_accepts(title, number, reason, fen) -> None:
    source = {"bill_title": title, "bill_number": number, "receipt_no": number, "reason": reason,
              "customer_name": title, "summary": reason, "result": reason, "amount": fen, "outstanding": fen,
              "time": dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC), "due_date": "2026-12-10"}
    for kind, template in nt.load({}, sandbox=True).items():
        data = {k: {"value": v} for k, v in nt.render(template, source).items()}
        assert rules.invalid_keys(data) == [], (kind, data)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("thing1", "水电改造首期款" * 5, "水电改造首期款水电改造首期款水电改造首…"),
    ("thing1", "多行\n标题\t😀", "多行 标题 😀"),
    ("thing1", "", "-"),
    ("character_string3", "R2611-00001", "R2611-00001"),
    ("character_string3", "收据 R2611 00001", "R261100001"),
    ("character_string3", "x" * 40, "x" * 32),
    ("amount2", 3_800_000, "38000.00元"),
    ("amount2", 5, "0.05元"),
    ("amount2", None, "0.00元"),
    ("time4", dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC), "2026-11-26 10:00"),
    ("time4", "2026-11-26T10:00:00+08:00", "2026-11-26 10:00"),
    ("time4", dt.date(2026, 12, 10), "2026-12-10"),
    ("phrase4", "支付未完成了吗", "支付未完成"),
    ("phrase4", "OK", "通知"),
])
def test_values_are_normalised_to_their_key_type(key, value, expected) -> None:
    assert nt.normalise(key, value) == expected


def test_configured_templates_override_the_sandbox_defaults() -> None:
    found = nt.load({"payment_succeeded": {"template_id": "TPL-1", "fields": {"thing9": "bill_number"}}},
                    sandbox=True)
    assert found["payment_succeeded"] == nt.Template("payment_succeeded", "TPL-1", {"thing9": "bill_number"})
    assert found["bill_opened"].template_id == "sandbox_bill_opened"
    assert nt.load({}, sandbox=False) == {}  # production: unconfigured kinds go as customer-service text


@pytest.mark.parametrize(("config", "problem"), [
    ({"receipt": {"template_id": "x"}}, "unknown notice kind"),
    ({"bill_opened": {"fields": {}}}, "template_id is required"),
    ({"bill_opened": {"template_id": "x", "fields": {"thing1": "nope"}}}, "unknown source"),
    ({"bill_opened": {"template_id": "x", "fields": {"amount2": "bill_title"}}}, "an amount key needs"),
    ({"bill_opened": {"template_id": "x", "fields": {"time4": "bill_number"}}}, "a time key needs"),
    ({"bill_opened": {"template_id": "x", "fields": {"phrase1": "amount"}}}, "amount source cannot fill"),
    ({"bill_opened": {"template_id": "x", "fields": {"keyword": "amount"}}}, "looks like thing1"),
])
def test_a_bad_template_configuration_is_refused_at_start(config, problem) -> None:
    with pytest.raises(nt.TemplateConfigError, match=problem):
        nt.load(config, sandbox=False)


class Links:
    def pay_url(self, number: str) -> str:
        return f"https://pay/{number}"

    def receipt_url(self, receipt_no: str) -> str:
        return f"https://receipt/{receipt_no}"


class Directory(NoDirectory):
    def staff_openid(self, staff_id: int) -> str | None:
        return {7: "o_sales"}.get(staff_id)

    def finance_openids(self) -> list[str]:
        return ["o_fin1", "o_fin2"]


def _payload(event_type: str, /, **data: object) -> dict[str, object]:
    bill = {"number": "B2611-0042", "amount_fen": 3_800_000, "stage": "首期款", "contract_no": "HT-1"}
    base = {"title": "水电改造 首期款", "outstanding_fen": 0, "issued_by_id": 7,
            "customer": {"name": "张三", "openid": "o_cust"}}
    return {"id": "evt_1", "type": event_type, "created_at": "2026-11-26T10:00:00+08:00", "bill": bill,
            "data": {**base, **data}}


PAYMENT = {"receipt_no": "R2611-00001", "amount_fen": 3_800_000, "transaction_id": "4200001",
           "paid_at": "2026-11-26T10:00:00+08:00"}


@pytest.mark.parametrize(("payload", "expected"), [
    (_payload("bill.opened"), [("bill_opened", "o_cust", "https://pay/B2611-0042")]),
    (_payload("bill.reminded"), [("bill_reminded", "o_cust", "https://pay/B2611-0042")]),
    (_payload("payment.succeeded", payment=PAYMENT), [
        ("payment_succeeded", "o_cust", "https://receipt/R2611-00001"),
        ("staff_payment", "o_sales", "https://receipt/R2611-00001")]),
    (_payload("payment.failed", amount_fen=100, reason="expired"),
     [("payment_failed", "o_cust", "https://pay/B2611-0042")]),
    (_payload("refund.failed", refund={"receipt_no": "R2611-00001", "status": "closed", "amount_fen": 5}), [
        ("refund_failed", "o_cust", "https://receipt/R2611-00001"),
        ("staff_refund_problem", "o_fin1", "https://receipt/R2611-00001"),
        ("staff_refund_problem", "o_fin2", "https://receipt/R2611-00001")]),
    # an abnormal refund reaches finance once, through its payment.anomaly (which says what to do)
    (_payload("refund.failed", refund={"receipt_no": "R2611-00001", "status": "abnormal", "amount_fen": 5}), [
        ("refund_failed", "o_cust", "https://receipt/R2611-00001")]),
    (_payload("payment.anomaly", kind="overpayment", amount_fen=5),
     [("staff_anomaly", "o_fin1", None), ("staff_anomaly", "o_fin2", None)]),
    (_payload(DEAD_LETTER_TOPIC, subscriber="erp", topic="bill.opened"),
     [("staff_dead_letter", "o_fin1", None), ("staff_dead_letter", "o_fin2", None)]),
    (_payload("bill.voided"), []),
    (_payload("bill.opened", customer={"name": "张三", "openid": None}), []),
])
def test_each_event_plans_its_notices_from_the_payload(payload, expected) -> None:
    assert [(p.kind, p.openid, p.link) for p in plan(payload, Directory(), Links())] == expected


def test_the_fallback_text_is_chinese_with_figures_and_a_link() -> None:
    payload = _payload("payment.failed", amount_fen=1_000_000, reason="expired")
    text = custom_text("payment_failed", values(payload), "https://pay/B2611-0042")
    assert text == ("【支付未完成】账单 B2611-0042（水电改造 首期款）的付款 ¥10,000.00 未完成：支付超时。\n"
                    '<a href="https://pay/B2611-0042">重新支付</a>')


def test_the_finance_anomaly_text_carries_the_next_step() -> None:
    step = "请登录商户平台处理。"
    payload = _payload("payment.anomaly", kind="refund_abnormal", amount_fen=500, next_step=step)
    assert custom_text("staff_anomaly", values(payload), None).endswith("请登录商户平台处理。")
    plain = _payload("payment.anomaly", kind="overpayment", amount_fen=5)
    assert custom_text("staff_anomaly", values(plain), None).endswith("请在后台处理。")
