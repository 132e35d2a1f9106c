"""Notices through the stand-ins over real HTTP: the receipt template once, staff alerts, the
customer-service fallback and its 48-hour window, TEMPLATESENDJOBFINISH, and a killed worker."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import update

from bot.notice_models import NoticeStatus
from db import utcnow
from erp_sync import relay_for
from erp_sync.outbox import DeliveryStatus, OutboxDelivery
from erp_sync.relay import Relay
from erp_sync.subscribers import subscribers
from payments import services
from payments.models import BillStatus
from sandbox.wechat_api import rules
from tests.fixtures.notices import Shop, wait_for

TEMPLATE_SEND = "/cgi-bin/message/template/send"


def _fault(shop: Shop, errcode: int, path: str = TEMPLATE_SEND) -> None:
    shop.live.wx.add_fail_next([{"path": path, "errcode": errcode}])


def test_a_paid_bill_sends_exactly_one_receipt_with_the_configured_fields(shop: Shop) -> None:
    number = shop.bill(3_800_000)
    payment = shop.pay(number)
    assert shop.status(number) is BillStatus.paid
    shop.drain()

    [receipt] = shop.templates(shop.customer, "payment_succeeded")
    paid_at = payment.paid_at.astimezone(dt.timezone(dt.timedelta(hours=8))).strftime("%Y-%m-%d %H:%M")
    assert {k: v["value"] for k, v in receipt["data"].items()} == {
        "thing1": "水电改造 首期款", "amount2": "38000.00元", "character_string3": payment.receipt_no,
        "time4": paid_at,
    }
    assert shop.receipt_of(receipt["url"]) == payment.receipt_no
    assert rules.invalid_keys(receipt["data"]) == []
    sends = shop.template_sends()

    shop.drain()
    for delivery in shop.deliveries():  # even if the relay is made to look at everything again
        assert delivery.status == DeliveryStatus.delivered.value
    with shop.live.db.transaction() as s:
        s.execute(update(OutboxDelivery).values(status="pending", next_attempt_at=utcnow()))
    shop.drain()
    assert shop.template_sends() == sends
    assert len(shop.templates(shop.customer, "payment_succeeded")) == 1


def test_the_issuer_hears_of_the_payment_and_the_job_finish_marks_it_delivered(shop: Shop) -> None:
    number = shop.bill(1_000_000)
    payment = shop.pay(number)
    shop.drain()
    [alert] = shop.templates(shop.sales, "staff_payment")
    assert alert["data"]["thing1"]["value"] == "张三"
    assert alert["data"]["amount2"]["value"] == "10000.00元"
    assert alert["data"]["character_string3"]["value"] == number
    assert shop.receipt_of(alert["url"]) == payment.receipt_no
    assert shop.templates(shop.finance) == []  # an ordinary payment doesn't bother finance
    wait_for(lambda: {n.status for n in shop.notices(kind="staff_payment")} == {NoticeStatus.delivered.value},
             what="TEMPLATESENDJOBFINISH → delivered")


def test_a_blocked_template_is_recorded_failed_by_the_job_finish(shop: Shop) -> None:
    shop.live.wx.user(shop.customer).blocks_templates = True
    shop.bill(500_000)
    shop.drain()
    [notice] = wait_for(lambda: [n for n in shop.notices(kind="bill_opened") if n.status == "failed"],
                        what="failed job finish")
    assert notice.msgid is not None and "user block" in (notice.last_error or "")


def test_43004_inside_the_48_hour_window_falls_back_to_a_customer_service_message(shop: Shop) -> None:
    number = shop.bill(3_800_000)
    shop.drain()  # the bill notice goes out normally
    payment = shop.pay(number)
    shop.customer_wrote(hours_ago=2)
    _fault(shop, 43004)
    shop.drain()

    [message] = shop.live.wx.custom_messages_for(shop.customer)
    text = message["text"]["content"]
    assert "收款成功" in text and "¥38,000.00" in text and payment.receipt_no in text
    link = text.split('<a href="', 1)[1].split('"', 1)[0]
    assert shop.receipt_of(link) == payment.receipt_no and "查看收据" in text
    [notice] = shop.notices(kind="payment_succeeded")
    assert (notice.status, notice.errcode) == (NoticeStatus.fallback_sent.value, 43004)
    assert all(d.status == DeliveryStatus.delivered.value for d in shop.deliveries())


def test_43004_outside_the_window_is_undeliverable_and_never_retried(shop: Shop) -> None:
    number = shop.bill(3_800_000)
    shop.drain()
    shop.pay(number)
    shop.customer_wrote(hours_ago=49)
    _fault(shop, 43004)
    shop.drain()
    sends = shop.template_sends()

    [notice] = shop.notices(kind="payment_succeeded")
    assert (notice.status, notice.errcode, notice.attempts) == (NoticeStatus.undeliverable.value, 43004, 1)
    assert shop.live.wx.custom_messages_for(shop.customer) == []
    assert all(d.status == DeliveryStatus.delivered.value for d in shop.deliveries())
    shop.drain()
    assert shop.template_sends() == sends


def test_an_unfollowed_customer_who_wrote_lately_is_undeliverable_after_one_fallback_try(shop: Shop) -> None:
    shop.customer_wrote(hours_ago=1)
    shop.live.wx.unfollow(shop.customer)
    shop.bill(200_000)
    shop.drain()
    [notice] = shop.notices(kind="bill_opened")
    assert (notice.status, notice.errcode) == (NoticeStatus.undeliverable.value, 43004)
    assert len(shop.live.wx.requests_for("/cgi-bin/message/custom/send")) == 1
    shop.drain()
    assert len(shop.live.wx.requests_for("/cgi-bin/message/custom/send")) == 1


def test_a_busy_wechat_is_retried_by_the_relay_and_sent_once(shop: Shop) -> None:
    _fault(shop, -1)
    shop.bill(300_000)
    shop.drain()
    [delivery] = shop.deliveries()
    assert delivery.status == DeliveryStatus.pending.value and "wechat -1" in (delivery.last_error or "")
    assert shop.templates(shop.customer) == []
    with shop.live.db.transaction() as s:
        s.execute(update(OutboxDelivery).values(next_attempt_at=utcnow()))
    shop.drain()
    assert len(shop.templates(shop.customer, "bill_opened")) == 1
    [notice] = shop.notices(kind="bill_opened")
    assert notice.attempts == 2 and notice.status in (NoticeStatus.sent.value, NoticeStatus.delivered.value)


def test_a_worker_killed_after_commit_before_send_sends_the_receipt_once_after_restart(shop: Shop) -> None:
    number = shop.bill(3_800_000)
    shop.pay(number)
    app = shop.live.app
    dead_worker = Relay(shop.live.db, subscribers(app), owner="dead-worker")
    claimed = dead_worker.claim("notices")  # leased, then the process dies before sending anything
    assert claimed

    shop.drain()  # the restarted worker respects the dead one's lease …
    assert shop.templates(shop.customer, "payment_succeeded") == []
    with shop.live.db.transaction() as s:  # … until it runs out
        s.execute(update(OutboxDelivery).values(lease_expires_at=utcnow()))
    shop.drain()
    assert len(shop.templates(shop.customer, "payment_succeeded")) == 1


def test_a_worker_killed_after_send_before_marking_does_not_send_twice(shop: Shop) -> None:
    number = shop.bill(3_800_000)
    shop.drain()
    shop.pay(number)
    app = shop.live.app
    dead_worker = Relay(shop.live.db, subscribers(app), owner="dead-worker")
    for item in dead_worker.claim("notices"):  # sends, then dies before marking the deliveries
        subscribers(app)["notices"].deliver(item.payload)
    assert len(shop.templates(shop.customer, "payment_succeeded")) == 1
    with shop.live.db.transaction() as s:
        s.execute(update(OutboxDelivery).values(lease_expires_at=utcnow()))
    shop.drain()
    assert len(shop.templates(shop.customer, "payment_succeeded")) == 1
    assert all(d.status == DeliveryStatus.delivered.value for d in shop.deliveries())


def test_a_reminder_and_an_expired_payment_reach_the_customer_with_a_pay_link(shop: Shop) -> None:
    number = shop.bill(3_800_000)
    with shop.live.db.transaction() as s:
        bill = services.get_bill_by_number(s, number)
        services.remind_bill(s, bill.id, today=dt.date(2026, 11, 27))
    shop.drain()
    [reminder] = shop.templates(shop.customer, "bill_reminded")
    assert shop.bill_of(reminder["url"]) == number
    assert reminder["data"]["amount2"]["value"] == "38000.00元"


def test_anomalies_and_dead_letters_reach_every_active_finance_member(shop: Shop) -> None:
    from tests.fixtures.domain import APPID, MCHID, Builder

    facts = Builder.facts("B9999-0001-deadbeef", 12_300)
    with shop.live.db.transaction() as s:
        services.apply_wechat_payment(s, facts, appid=APPID, mchid=MCHID)
    shop.drain()
    [anomaly] = shop.templates(shop.finance, "staff_anomaly")
    assert anomaly["data"]["thing1"]["value"] == "未知订单"
    assert anomaly["data"]["amount2"]["value"] == "123.00元"

    shop.bill(100_000)  # its notice keeps failing past the relay's retry window → dead → finance
    with shop.live.db.transaction() as s:
        s.execute(update(OutboxDelivery).where(OutboxDelivery.status == "pending")
                  .values(failing_since=utcnow() - dt.timedelta(days=4)))
    _fault(shop, -1)
    relay_for(shop.live.app).run_once()
    shop.drain()
    [alert] = shop.templates(shop.finance, "staff_dead_letter")
    assert alert["data"]["thing1"]["value"] == "通知推送失败 bill.opened"
    assert [d.status for d in shop.deliveries() if d.status == "dead"] == ["dead"]
