"""Daily reconciliation against the WeChat Pay stand-in's trade bill: a clean day, injected differences
(an unknown payment, a payment we never heard of, an amount mismatch, a missing refund), healing,
one record per day, the finance summary event and the CLI."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from db import CHINA_TZ, utcnow
from erp_sync.outbox import OutboxEvent
from payments.models import AnomalyKind, BillStatus, PaymentAnomaly, Refund
from payments.reconcile import SUMMARY_TOPIC, reconcile_day
from payments.reconcile_models import Reconciliation
from payments.refund_executor import execute_pending_refunds
from payments.refund_results import settle_refund
from tests.fixtures.payments import PayBench
from tests.fixtures.wechatpay_standin import wait_until
from tests.integration.test_notify import open_native
from tests.integration.test_refunds import ask_refund, bill_of, refund_of


def today() -> dt.date:
    return utcnow().astimezone(CHINA_TZ).date()


def paid_bill(bench: PayBench, amount_fen: int, *, notify: bool = True) -> tuple[str, str]:
    number = bench.issue_bill(amount_fen)
    out_trade_no = open_native(bench, number)
    bench.pay.pay(out_trade_no, notify=notify)
    if notify:
        wait_until(lambda: bill_of(bench, number).status is BillStatus.paid)
    return number, out_trade_no


def refunded(bench: PayBench, number: str, amount_fen: int, no: str) -> None:
    ask_refund(bench, number, amount_fen, no)
    execute_pending_refunds(bench.db, bench.gateway)
    wait_until(lambda: refund_of(bench, no).finished_at is not None)


def records(bench: PayBench) -> list[Reconciliation]:
    with bench.db.transaction() as s:
        return list(s.execute(select(Reconciliation)).scalars())


def test_a_clean_day_reports_clean_with_its_totals_and_fees(paybench: PayBench) -> None:
    number, _ = paid_bill(paybench, 1_000_000)
    refunded(paybench, number, 200_000, "ERP-C-1")

    report = reconcile_day(paybench.db, paybench.gateway, today())

    assert report.status == "clean"
    assert report.counts | {} == report.counts and report.counts["matched_payments"] == 1
    assert (report.counts["matched_refunds"], report.counts["healed"]) == (1, 0)
    assert report.totals == {
        "wechat_paid_fen": 1_000_000,
        "wechat_refunded_fen": 200_000,
        "fee_fen": 6_000 - 1_200,  # 0.6 % charged on the payment, returned on the refund
        "ours_paid_fen": 1_000_000,
        "ours_refunded_fen": 200_000,
    }


def test_injected_differences_are_found_classified_and_the_unknown_payment_healed(paybench: PayBench) -> None:
    day = today()
    changed_no, changed_trade = paid_bill(paybench, 500_000)
    refunded(paybench, changed_no, 100_000, "ERP-C-2")
    lost_no, _ = paid_bill(paybench, 300_000, notify=False)  # WeChat has it; we never heard of it
    paybench.pay.bill_injections.add(
        day.isoformat(), "amount_changed", out_trade_no=changed_trade, total=499_999
    )
    paybench.pay.bill_injections.add(day.isoformat(), "refund_removed", out_refund_no="ERP-C-2")
    paybench.pay.bill_injections.add(day.isoformat(), "extra_paid", total=777)

    progress: list[str] = []
    report = reconcile_day(paybench.db, paybench.gateway, day, progress=progress.append)

    assert report.status == "differences"
    missing = report.differences["missing_ours"]
    assert sorted((m["amount_fen"], m["healed"]) for m in missing) == [(777, "anomaly"), (300_000, "applied")]
    assert bill_of(paybench, lost_no).status is BillStatus.paid  # healed: the payment is recorded
    assert [d["wechat_fen"] - d["ours_fen"] for d in report.differences["amount_differences"]] == [-1]
    assert report.differences["missing_wechat"] == [
        {"type": "refund", "out_refund_no": "ERP-C-2", "amount_fen": 100_000}
    ]
    assert report.counts["healed"] == 1
    with paybench.db.transaction() as s:
        kinds = set(s.execute(select(PaymentAnomaly.kind)).scalars())
        summary = s.execute(select(OutboxEvent).where(OutboxEvent.topic == SUMMARY_TOPIC)).scalar_one()
    assert AnomalyKind.unknown_order in kinds
    assert summary.payload["data"]["status"] == "differences" and summary.bill_id is None
    assert any("SHA1" in line for line in progress) and any("healed payment" in line for line in progress)


def test_reconciling_a_day_again_updates_its_one_record(paybench: PayBench) -> None:
    paid_bill(paybench, 300_000, notify=False)
    first = reconcile_day(paybench.db, paybench.gateway, today())
    second = reconcile_day(paybench.db, paybench.gateway, today())

    assert (first.status, second.status) == ("differences", "clean")  # the first run healed the payment
    (row,) = records(paybench)
    assert (row.bill_date, row.status, row.runs, row.counts["matched_payments"]) == (today(), "clean", 2, 1)
    assert list(row.fees["payments"].values()) == [1_800]


def test_a_refund_whose_notification_was_lost_is_settled_from_the_bill(paybench: PayBench) -> None:
    number, _ = paid_bill(paybench, 300_000)
    paybench.pay.notifier.set_faults(lost=True)
    refunded_at_wechat = "ERP-C-3"
    ask_refund(paybench, number, 50_000, refunded_at_wechat)
    execute_pending_refunds(paybench.db, paybench.gateway)
    wait_until(lambda: any(r["status"] == "SUCCESS" for r in paybench.pay.refunds()))

    report = reconcile_day(paybench.db, paybench.gateway, today())

    assert [(m["out_refund_no"], m["healed"]) for m in report.differences["missing_ours"]] == [
        (refunded_at_wechat, "applied")
    ]
    assert bill_of(paybench, number).refunded_fen == 50_000


def test_a_day_without_a_statement_is_clean_when_we_have_nothing_either(paybench: PayBench) -> None:
    report = reconcile_day(paybench.db, paybench.gateway, dt.date(2026, 1, 5))
    assert (report.status, report.counts["wechat_rows"]) == ("clean", 0)


def test_the_cli_prints_progress_and_a_table(paybench: PayBench) -> None:
    paid_bill(paybench, 123_456)
    runner = paybench.app.test_cli_runner()

    result = runner.invoke(args=["reconcile", "--date", today().isoformat()])

    assert result.exit_code == 0, result.output
    assert "… requesting the trade bill" in result.output
    assert "结果" in result.output and "一致" in result.output and "1234.56 / 0.00" in result.output
    assert runner.invoke(args=["reconcile", "--date", "2026-13-01"]).exit_code == 2


def test_settling_a_refund_twice_records_one_abnormal_anomaly(paybench: PayBench) -> None:
    from payments.models import RefundStatus

    number, _ = paid_bill(paybench, 100_000)
    ask_refund(paybench, number, 100, "ERP-C-4")
    for _ in range(2):
        with paybench.db.transaction() as s:
            settle_refund(s, "ERP-C-4", status=RefundStatus.abnormal)
    with paybench.db.transaction() as s:
        assert len(list(s.execute(select(PaymentAnomaly)).scalars())) == 1
        assert s.execute(select(Refund.status)).scalar_one() is RefundStatus.abnormal
