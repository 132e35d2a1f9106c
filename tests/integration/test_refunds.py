"""Refunds carried out at the WeChat Pay stand-in: partial refunds to the fen spread over payments,
refusals, retries with the same out_refund_no, the REFUND.* notifications (SUCCESS, CLOSED, ABNORMAL)
and a lost notification healed by the query job."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from db import utcnow
from erp_sync.outbox import OutboxEvent
from payments import services
from payments.errors import RefundNotAllowed
from payments.models import AnomalyKind, Bill, BillStatus, PaymentAnomaly, Refund, RefundStatus
from payments.refund_executor import execute_pending_refunds, query_processing_refunds
from tests.fixtures.payments import PayBench
from tests.fixtures.wechatpay_standin import wait_until
from tests.integration.test_notify import open_native

LATER = dt.timedelta(minutes=3)


def bill_of(bench: PayBench, number: str) -> Bill:
    with bench.db.transaction() as s:
        bill = s.execute(select(Bill).where(Bill.number == number)).scalar_one()
        _ = bill.payments, bill.refunds
        return bill


def refund_of(bench: PayBench, out_refund_no: str) -> Refund:
    with bench.db.transaction() as s:
        return s.execute(select(Refund).where(Refund.out_refund_no == out_refund_no)).scalar_one()


def paid_in_two(bench: PayBench, first: int = 1_000_000, total: int = 3_800_000) -> str:
    number = bench.issue_bill(total)
    bench.pay.pay(open_native(bench, number, first))
    wait_until(lambda: bill_of(bench, number).paid_fen == first)
    bench.pay.pay(open_native(bench, number, total - first))
    wait_until(lambda: bill_of(bench, number).status is BillStatus.paid)
    return number


def ask_refund(bench: PayBench, number: str, amount_fen: int, request_no: str) -> list[str]:
    with bench.db.transaction() as s:
        bill = services.get_bill_by_number(s, number)
        refunds = services.request_refund(
            s,
            bill_id=bill.id,
            amount_fen=amount_fen,
            reason="少做一项吊顶",
            request_no=request_no,
            source="erp",
        )
        return [r.out_refund_no for r in refunds]


def topics(bench: PayBench) -> list[str]:
    with bench.db.transaction() as s:
        return list(s.execute(select(OutboxEvent.topic).order_by(OutboxEvent.created_at)).scalars())


def test_a_refund_to_the_fen_is_spread_over_two_payments_newest_first(paybench: PayBench) -> None:
    number = paid_in_two(paybench)
    nos = ask_refund(paybench, number, 2_800_001, "ERP-R-1")
    assert nos == ["ERP-R-1-1", "ERP-R-1-2"]

    run = execute_pending_refunds(paybench.db, paybench.gateway)

    assert run.sent == 2
    wait_until(lambda: bill_of(paybench, number).refunded_fen == 2_800_001)
    bill = bill_of(paybench, number)
    assert bill.status is BillStatus.partially_refunded
    newest, oldest = sorted(bill.payments, key=lambda p: (p.paid_at, p.id), reverse=True)
    assert (newest.refunded_fen, oldest.refunded_fen) == (2_800_000, 1)
    at_wechat = {
        (r["out_refund_no"], r["transaction_id"], r["amount"]["refund"]) for r in paybench.pay.refunds()
    }
    assert at_wechat == {
        ("ERP-R-1-1", newest.transaction_id, 2_800_000),
        ("ERP-R-1-2", oldest.transaction_id, 1),
    }
    assert topics(paybench).count("refund.succeeded") == 2


def test_a_refund_above_the_refundable_amount_is_refused_with_the_reason(paybench: PayBench) -> None:
    number = paid_in_two(paybench)
    ask_refund(paybench, number, 2_800_001, "ERP-R-2")  # in flight: counts against what is refundable

    with pytest.raises(RefundNotAllowed) as refused:
        ask_refund(paybench, number, 1_000_000, "ERP-R-3")

    assert refused.value.message == "退款金额超过可退金额，目前最多可退 ¥9,999.99"
    assert [r.out_refund_no for r in bill_of(paybench, number).refunds] == ["ERP-R-2-1", "ERP-R-2-2"]


def test_a_refund_retried_after_an_ambiguous_error_reuses_its_out_refund_no(paybench: PayBench) -> None:
    number = paybench.issue_bill(500_000)
    paybench.pay.pay(open_native(paybench, number))
    wait_until(lambda: bill_of(paybench, number).status is BillStatus.paid)
    ask_refund(paybench, number, 100_000, "ERP-R-4")
    # WeChat takes the refund, then the answer is lost (a 500 after processing).
    paybench.pay.api_faults.add(kind="error500", path_prefix="/v3/refund/domestic/refunds", after=True)

    first = execute_pending_refunds(paybench.db, paybench.gateway)
    assert (first.sent, first.retry) == (0, 1)
    assert refund_of(paybench, "ERP-R-4").status is RefundStatus.pending
    second = execute_pending_refunds(paybench.db, paybench.gateway, now=utcnow() + dt.timedelta(minutes=5))

    assert second.sent == 1
    posted = [r for r in paybench.pay.received() if r["method"] == "POST" and "/refund/" in r["path"]]
    assert [r["body"]["out_refund_no"] for r in posted] == ["ERP-R-4", "ERP-R-4"]
    assert [r["out_refund_no"] for r in paybench.pay.refunds()] == ["ERP-R-4"]  # refunded once
    wait_until(lambda: refund_of(paybench, "ERP-R-4").status is RefundStatus.succeeded)
    assert bill_of(paybench, number).refunded_fen == 100_000


def test_a_closed_refund_leaves_the_money_refundable_again(paybench: PayBench) -> None:
    number = paid_in_two(paybench)
    ask_refund(paybench, number, 50_000, "ERP-R-5")
    paybench.pay.set_refund_outcome("CLOSED", out_refund_no="ERP-R-5", delay=0.02)

    execute_pending_refunds(paybench.db, paybench.gateway)

    wait_until(lambda: refund_of(paybench, "ERP-R-5").status is RefundStatus.closed)
    bill = bill_of(paybench, number)
    assert (bill.status, bill.refunded_fen) == (BillStatus.paid, 0)
    assert ask_refund(paybench, number, 3_800_000, "ERP-R-6") == ["ERP-R-6-1", "ERP-R-6-2"]
    assert "refund.failed" in topics(paybench)


def test_an_abnormal_refund_tells_finance_what_to_do_next(paybench: PayBench) -> None:
    number = paid_in_two(paybench)
    ask_refund(paybench, number, 30_000, "ERP-R-7")
    paybench.pay.set_refund_outcome("ABNORMAL", out_refund_no="ERP-R-7", delay=0.02)

    execute_pending_refunds(paybench.db, paybench.gateway)

    wait_until(lambda: refund_of(paybench, "ERP-R-7").status is RefundStatus.abnormal)
    with paybench.db.transaction() as s:
        anomaly = s.execute(select(PaymentAnomaly)).scalar_one()
        events = {e.topic: e.payload for e in s.execute(select(OutboxEvent)).scalars()}
    assert (anomaly.kind, anomaly.amount_fen) == (AnomalyKind.refund_abnormal, 30_000)
    assert "ERP-R-7" in anomaly.detail["next_step"] and "商户平台" in anomaly.detail["next_step"]
    assert events["payment.anomaly"]["data"]["next_step"] == anomaly.detail["next_step"]
    assert events["refund.failed"]["data"]["refund"]["status"] == "abnormal"
    assert bill_of(paybench, number).refunded_fen == 0


def test_a_lost_refund_notification_is_healed_by_the_query_job(paybench: PayBench) -> None:
    number = paid_in_two(paybench)
    ask_refund(paybench, number, 12_345, "ERP-R-8")
    paybench.pay.notifier.set_faults(lost=True)
    execute_pending_refunds(paybench.db, paybench.gateway)
    wait_until(lambda: any(r["status"] == "SUCCESS" for r in paybench.pay.refunds()))
    assert refund_of(paybench, "ERP-R-8").status is RefundStatus.processing

    assert query_processing_refunds(paybench.db, paybench.gateway).queried == 0  # not due yet
    run = query_processing_refunds(paybench.db, paybench.gateway, now=utcnow() + LATER)

    assert (run.queried, run.settled) == (1, 1)
    assert refund_of(paybench, "ERP-R-8").status is RefundStatus.succeeded
    assert bill_of(paybench, number).refunded_fen == 12_345


def test_a_refund_still_processing_is_queried_again_later_with_backoff(paybench: PayBench) -> None:
    number = paid_in_two(paybench)
    ask_refund(paybench, number, 100, "ERP-R-9")
    paybench.pay.set_refund_outcome("PROCESSING", out_refund_no="ERP-R-9")
    execute_pending_refunds(paybench.db, paybench.gateway)
    now = utcnow() + LATER

    assert query_processing_refunds(paybench.db, paybench.gateway, now=now).queried == 1
    assert query_processing_refunds(paybench.db, paybench.gateway, now=now).queried == 0
    refund = refund_of(paybench, "ERP-R-9")
    assert refund.status is RefundStatus.processing and refund.check_count == 1
    assert refund.next_check_at is not None and refund.next_check_at > now
