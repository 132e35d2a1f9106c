"""Recovery against the WeChat Pay stand-in: lost notifications are found by querying, stale attempts
are closed at WeChat, and money that lands on a closed attempt is attached or its excess refunded."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from db import utcnow
from erp_sync.outbox import OutboxEvent
from payments.models import AttemptStatus, Bill, BillStatus, PaymentAttempt, Refund, RefundKind, RefundStatus
from payments.recovery import close_stale, reconcile_pending, run_all
from payments.refund_executor import execute_pending_refunds
from tests.fixtures.payments import PayBench
from tests.fixtures.wechatpay_standin import wait_until
from tests.integration.test_notify import open_native

LATER = dt.timedelta(minutes=3)


def bill_of(bench: PayBench, number: str) -> Bill:
    with bench.db.transaction() as s:
        bill = s.execute(select(Bill).where(Bill.number == number)).scalar_one()
        _ = bill.payments, bill.attempts, bill.refunds
        return bill


def attempt_of(bench: PayBench, out_trade_no: str) -> PaymentAttempt:
    with bench.db.transaction() as s:
        return s.execute(
            select(PaymentAttempt).where(PaymentAttempt.out_trade_no == out_trade_no)
        ).scalar_one()


def test_a_notification_the_standin_drops_is_found_by_the_next_recovery_run(paybench: PayBench) -> None:
    number = paybench.issue_bill(3_800_000)
    out_trade_no = open_native(paybench, number)
    paybench.pay.notifier.set_faults(lost=True)
    paybench.pay.pay(out_trade_no)
    assert paybench.pay.notifications()["notifications"][0]["state"] == "lost"
    assert bill_of(paybench, number).status is BillStatus.open

    report = reconcile_pending(paybench.db, paybench.gateway, now=utcnow() + LATER)

    assert (report.checked, report.applied) == (1, 1)
    bill = bill_of(paybench, number)
    assert (bill.status, bill.paid_fen, len(bill.payments)) == (BillStatus.paid, 3_800_000, 1)


def test_an_unpaid_attempt_is_queried_again_later_with_backoff(paybench: PayBench) -> None:
    number = paybench.issue_bill(100_000)
    out_trade_no = open_native(paybench, number)
    now = utcnow() + LATER
    assert reconcile_pending(paybench.db, paybench.gateway, now=now).checked == 1
    assert reconcile_pending(paybench.db, paybench.gateway, now=now).checked == 0  # not due again yet
    attempt = attempt_of(paybench, out_trade_no)
    assert attempt.status is AttemptStatus.pending and attempt.check_count == 1
    assert attempt.next_check_at is not None and attempt.next_check_at > now


def test_a_payment_on_a_superseded_attempt_is_attached_when_it_fits(paybench: PayBench) -> None:
    number = paybench.issue_bill(3_800_000)
    whole = open_native(paybench, number)
    partial = open_native(paybench, number, 1_000_000)  # supersedes the first (closed here only)
    assert attempt_of(paybench, whole).status is AttemptStatus.closed
    paybench.pay.pay(whole)  # the customer had the old QR open and paid it anyway
    wait_until(lambda: bill_of(paybench, number).status is BillStatus.paid)
    bill = bill_of(paybench, number)
    assert (bill.paid_fen, [r.kind for r in bill.refunds]) == (3_800_000, [])
    assert (
        attempt_of(paybench, partial).status is AttemptStatus.closed
    )  # the bill is paid: nothing else is open


def test_the_excess_of_a_late_payment_is_refunded_automatically(paybench: PayBench) -> None:
    number = paybench.issue_bill(3_800_000)
    whole = open_native(paybench, number)
    partial = open_native(paybench, number, 1_000_000)
    paybench.pay.pay(partial)
    wait_until(lambda: bill_of(paybench, number).paid_fen == 1_000_000)
    paybench.pay.pay(whole)  # ¥38,000 on a bill that only takes ¥28,000 more
    wait_until(lambda: bill_of(paybench, number).status is BillStatus.paid)

    run = execute_pending_refunds(paybench.db, paybench.gateway)

    assert run.sent == 1
    wait_until(lambda: bill_of(paybench, number).refunds[0].status is RefundStatus.succeeded)
    bill = bill_of(paybench, number)
    refund = bill.refunds[0]
    assert (refund.kind, refund.amount_fen, bill.paid_fen, bill.refunded_fen) == (
        RefundKind.excess,
        1_000_000,
        3_800_000,
        0,
    )
    sent = paybench.pay.refunds()
    assert [(r["out_refund_no"], r["amount"]["refund"]) for r in sent] == [(refund.out_refund_no, 1_000_000)]
    assert sent[0]["notify_url"].endswith("/payments/wechatpay/refund-notify")
    with paybench.db.transaction() as s:
        topics = set(s.execute(select(OutboxEvent.topic)).scalars())
    assert {"payment.anomaly", "refund.succeeded"} <= topics  # finance is told


def test_closing_a_superseded_attempt_that_was_paid_meanwhile_takes_the_money(paybench: PayBench) -> None:
    number = paybench.issue_bill(3_800_000)
    whole = open_native(paybench, number)
    open_native(paybench, number, 1_000_000)
    paybench.pay.pay(whole, notify=False)  # paid at WeChat, and its notification never comes

    report = close_stale(paybench.db, paybench.gateway)

    assert report.applied == 1  # ORDERPAID → queried → applied
    assert bill_of(paybench, number).status is BillStatus.paid


def test_superseded_and_expired_attempts_are_closed_at_wechat(paybench: PayBench) -> None:
    number = paybench.issue_bill(3_800_000)
    whole = open_native(paybench, number)
    partial = open_native(paybench, number, 1_000_000)
    report = close_stale(paybench.db, paybench.gateway, now=utcnow() + dt.timedelta(hours=3))
    assert (report.closed, report.expired) == (1, 1)
    for no in (whole, partial):
        assert paybench.pay.order(no)["trade_state"] == "CLOSED"
        attempt = attempt_of(paybench, no)
        assert (attempt.status, attempt.remote_closed) == (AttemptStatus.closed, True)


def test_an_expired_jsapi_attempt_tells_the_customer_to_pay_again(paybench: PayBench) -> None:
    from payments.checkout import open_attempt
    from payments.models import Channel
    from payments.runtime import checkout_policy

    number = paybench.issue_bill(500_000)
    bill_id = bill_of(paybench, number).id
    with paybench.app.app_context():
        opened = open_attempt(
            paybench.db,
            paybench.gateway,
            checkout_policy(),
            bill_id,
            channel=Channel.jsapi,
            payer_openid="o_customer_1",
        )
    close_stale(paybench.db, paybench.gateway, now=utcnow() + dt.timedelta(hours=3))
    assert attempt_of(paybench, opened.out_trade_no).close_reason == "expired"
    with paybench.db.transaction() as s:
        failed = s.execute(select(OutboxEvent).where(OutboxEvent.topic == "payment.failed")).scalar_one()
    assert failed.payload["data"]["out_trade_no"] == opened.out_trade_no


def test_the_recover_command_prints_progress_and_a_summary(paybench: PayBench) -> None:
    number = paybench.issue_bill(100_000)
    out_trade_no = open_native(paybench, number)
    paybench.pay.notifier.set_faults(lost=True)
    paybench.pay.pay(out_trade_no)
    with paybench.db.transaction() as s:  # make it due now
        attempt = s.execute(select(PaymentAttempt)).scalar_one()
        attempt.created_at = attempt.next_check_at = utcnow() - LATER
    result = paybench.app.test_cli_runner().invoke(args=["payments", "recover"])
    assert result.exit_code == 0, result.output
    assert f"queried {out_trade_no}: applied" in result.output
    assert "checked 1, applied 1" in result.output
    assert bill_of(paybench, number).status is BillStatus.paid


def test_run_all_is_idempotent(paybench: PayBench) -> None:
    paybench.issue_bill(100_000)
    first = run_all(paybench.db, paybench.gateway)
    second = run_all(paybench.db, paybench.gateway)
    assert first.errors == second.errors == []
    with paybench.db.transaction() as s:
        assert s.execute(select(Refund)).first() is None
