"""POST /payments/wechatpay/notify over HTTP: the answers of ARCHITECTURE "Behaviour at the edges",
partial payments, and one notification delivered many times at once."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import requests
from sqlalchemy import delete, func, select

from erp_sync.outbox import OutboxEvent
from payments.models import AttemptStatus, Bill, BillStatus, Payment, PaymentAnomaly, PaymentAttempt
from payments.notifications import PaymentNotification
from tests.fixtures.payments import PayBench, SignFn
from tests.fixtures.wechatpay_standin import wait_until


def open_native(bench: PayBench, number: str, amount_fen: int | None = None) -> str:
    """Open a Native attempt through the public QR route; return its out_trade_no."""
    query = f"?amount_fen={amount_fen}" if amount_fen else ""
    answer = requests.get(bench.pay_url(number) + "/qr.png" + query, timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "image/png"
    with bench.db.transaction() as s:
        return str(
            s.execute(
                select(PaymentAttempt.out_trade_no)
                .join(Bill, Bill.id == PaymentAttempt.bill_id)
                .where(Bill.number == number, PaymentAttempt.status == AttemptStatus.pending)
                .order_by(PaymentAttempt.id.desc())
            )
            .scalars()
            .first()
        )


def transaction(bench: PayBench, trade_no: str, total: int, **changes: Any) -> dict[str, Any]:
    c = bench.credentials
    resource = {
        "appid": c.app_id,
        "mchid": c.mch_id,
        "out_trade_no": trade_no,
        "transaction_id": "4200000" + str(time.time_ns())[-21:],
        "trade_type": "NATIVE",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "OTHERS",
        "attach": "",
        "success_time": "2026-11-26T10:00:00+08:00",
        "payer": {"openid": "o_payer_1"},
        "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"},
    }
    resource.update(changes)
    return resource


def post(bench: PayBench, headers: dict[str, str], body: bytes) -> requests.Response:
    return requests.post(bench.url + "/payments/wechatpay/notify", data=body, headers=headers, timeout=10)


def state(bench: PayBench, number: str) -> tuple[Bill, int, int, int]:
    with bench.db.transaction() as s:
        bill = s.execute(select(Bill).where(Bill.number == number)).scalar_one()
        payments = s.scalar(select(func.count()).select_from(Payment)) or 0
        events = (
            s.scalar(
                select(func.count()).select_from(OutboxEvent).where(OutboxEvent.topic == "payment.succeeded")
            )
            or 0
        )
        anomalies = s.scalar(select(func.count()).select_from(PaymentAnomaly)) or 0
        return bill, payments, events, anomalies


def test_a_paid_native_order_is_applied_once_and_answered_204(paybench: PayBench) -> None:
    number = paybench.issue_bill(3_800_000)
    out_trade_no = open_native(paybench, number)
    paybench.pay.pay(out_trade_no)
    wait_until(lambda: state(paybench, number)[0].status is BillStatus.paid)
    deliveries = wait_until(lambda: paybench.pay.deliveries())
    assert [d["status"] for d in deliveries] == [204]
    bill, payments, events, anomalies = state(paybench, number)
    assert (bill.paid_fen, payments, events, anomalies) == (3_800_000, 1, 1, 0)


def test_the_same_notification_again_is_answered_204_without_a_second_payment(
    paybench: PayBench, sign_notification: SignFn
) -> None:
    number = paybench.issue_bill(500_000)
    out_trade_no = open_native(paybench, number)
    headers, body = sign_notification(transaction(paybench, out_trade_no, 500_000))
    assert post(paybench, headers, body).status_code == 204
    assert post(paybench, headers, body).status_code == 204
    bill, payments, events, _ = state(paybench, number)
    assert (bill.status, payments, events) == (BillStatus.paid, 1, 1)
    with paybench.db.transaction() as s:
        stored = s.execute(select(PaymentNotification)).scalar_one()
        assert (stored.outcome, stored.deliveries) == ("applied", 2)


def test_partial_payment_then_the_rest_gives_two_payments_and_consecutive_seq(paybench: PayBench) -> None:
    number = paybench.issue_bill(3_800_000)
    first = open_native(paybench, number, 1_000_000)
    paybench.pay.pay(first)
    wait_until(lambda: state(paybench, number)[0].paid_fen == 1_000_000)
    assert state(paybench, number)[0].status is BillStatus.partially_paid
    rest = open_native(paybench, number, 2_800_000)
    paybench.pay.pay(rest)
    wait_until(lambda: state(paybench, number)[0].status is BillStatus.paid)
    bill, payments, events, _ = state(paybench, number)
    assert (bill.paid_fen, payments, events) == (3_800_000, 2, 2)
    with paybench.db.transaction() as s:
        seqs = list(
            s.execute(
                select(OutboxEvent.seq)
                .where(OutboxEvent.topic == "payment.succeeded")
                .order_by(OutboxEvent.seq)
            ).scalars()
        )
    assert seqs[1] == seqs[0] + 1


FORGERIES = {
    "forged signature": ({"wrong_key": True}, {}, 401),
    "SIGNTEST probe": ({"signtest": True}, {}, 401),
    # offsets from "now" at the moment of signing (an absolute time would age while the suite runs)
    "stale timestamp": ({"timestamp_offset": -400}, {}, 401),
    "future timestamp": ({"timestamp_offset": 400}, {}, 401),
    "unknown serial": ({"serial": "PUB_KEY_ID_0000000000000000000000000000000000"}, {}, 401),
    "wrong mchid": ({}, {"mchid": "1999999999"}, 200),
    "wrong appid": ({}, {"appid": "wx0000000000000000"}, 200),
    "wrong amount": ({}, {"amount": {"total": 1, "payer_total": 1, "currency": "CNY"}}, 200),
    "unknown out_trade_no": ({}, {"out_trade_no": "B0000-0000-deadbeef"}, 200),
}


@pytest.mark.parametrize("case", list(FORGERIES))
def test_a_notification_that_cannot_be_applied_changes_nothing_and_gets_its_answer(
    paybench: PayBench, sign_notification: SignFn, case: str
) -> None:
    sign_args, changes, expected = FORGERIES[case]
    if "timestamp_offset" in sign_args:
        sign_args = {"timestamp": int(time.time()) + sign_args["timestamp_offset"]}
    number = paybench.issue_bill(500_000)
    out_trade_no = open_native(paybench, number)
    headers, body = sign_notification(transaction(paybench, out_trade_no, 500_000, **changes), **sign_args)
    answer = post(paybench, headers, body)
    assert answer.status_code == expected
    if expected == 401:
        assert answer.json()["code"] == "FAIL" and answer.json()["message"]
    bill, payments, events, anomalies = state(paybench, number)
    assert (bill.status, bill.paid_fen, payments, events) == (BillStatus.open, 0, 0, 0)
    assert anomalies == (1 if expected == 200 else 0)


def test_an_unknown_event_type_is_answered_204(paybench: PayBench, sign_notification: SignFn) -> None:
    headers, body = sign_notification({"anything": 1}, event_type="TRANSACTION.SOMETHING_NEW")
    assert post(paybench, headers, body).status_code == 204


@pytest.mark.postgres
def test_one_notification_delivered_20_times_concurrently_records_one_payment(
    pg_db: Any, paybench_on_pg: PayBench, sign_notification: SignFn
) -> None:
    bench = paybench_on_pg
    number = bench.issue_bill(3_800_000)
    out_trade_no = open_native(bench, number)
    headers, body = sign_notification(transaction(bench, out_trade_no, 3_800_000))
    barrier = threading.Barrier(20)
    answers: list[int] = []

    def deliver() -> None:
        barrier.wait()
        answers.append(post(bench, headers, body).status_code)

    threads = [threading.Thread(target=deliver) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [204] * 20
    bill, payments, events, anomalies = state(bench, number)
    assert (bill.status, payments, events, anomalies) == (BillStatus.paid, 1, 1, 0)


def test_concurrent_notifications_of_several_bills_each_count_once(
    paybench: PayBench, sign_notification: SignFn
) -> None:
    """On either database (on SQLite, concurrent notifications share write transactions: db.GroupCommit):
    one notification delivered 10 times at once among 6 others, every answer 204, every bill paid once."""
    numbers = [paybench.issue_bill(100_000 + i, phone=f"1380013{i:04d}") for i in range(7)]
    signed = [sign_notification(transaction(paybench, open_native(paybench, n), 100_000 + i))
              for i, n in enumerate(numbers)]
    deliveries = [signed[0]] * 10 + signed[1:]
    barrier = threading.Barrier(len(deliveries))
    answers: list[int] = []

    def deliver(headers: dict[str, str], body: bytes) -> None:
        barrier.wait()
        answers.append(post(paybench, headers, body).status_code)

    threads = [threading.Thread(target=deliver, args=d) for d in deliveries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [204] * len(deliveries)
    for number in numbers:
        bill, payments, events, anomalies = state(paybench, number)  # the counts are of all bills
        assert (bill.status, payments, events, anomalies) == (BillStatus.paid, 7, 7, 0), number
    with paybench.db.transaction() as s:
        counts = sorted(s.scalars(select(PaymentNotification.deliveries)))
    assert counts == [1] * 6 + [10]


def test_a_notification_that_fails_to_apply_is_kept_answered_500_and_applied_on_retry(
    paybench: PayBench, sign_notification: SignFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    number = paybench.issue_bill(500_000)
    out_trade_no = open_native(paybench, number)
    headers, body = sign_notification(transaction(paybench, out_trade_no, 500_000))

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("database hiccup")

    monkeypatch.setattr("payments.services.apply_wechat_payment", broken)
    monkeypatch.setattr("payments.notify.apply_in_one_call", broken)  # PostgreSQL's first try fails too
    failed = post(paybench, headers, body)
    assert failed.status_code == 500 and failed.json()["code"] == "FAIL"
    with paybench.db.transaction() as s:
        kept = s.execute(select(PaymentNotification)).scalar_one()
        assert (kept.outcome, json.loads(kept.body)["id"]) == (None, json.loads(body)["id"])
    monkeypatch.undo()
    assert post(paybench, headers, body).status_code == 204
    assert state(paybench, number)[0].status is BillStatus.paid


def test_a_write_that_fails_with_the_commit_leaves_nothing_and_no_gap_in_receipt_numbers(
    paybench: PayBench, sign_notification: SignFn
) -> None:
    """The hot path's last statements go out with the COMMIT on PostgreSQL (at once on SQLite): one
    that fails there (here the event's (bill, seq) is taken) fails the whole notification — 500, the
    raw notification kept, no payment, the receipt counter not moved — and the retry applies it with
    the next receipt number, as if the failure had never happened."""
    number = paybench.issue_bill(500_000)
    out_trade_no = open_native(paybench, number)
    headers, body = sign_notification(transaction(paybench, out_trade_no, 500_000))
    with paybench.db.transaction() as s:
        bill = s.execute(select(Bill).where(Bill.number == number)).scalar_one()
        blocker = OutboxEvent(id="evt_blocker", topic="test.blocker", bill_id=bill.id, seq=bill.seq + 1,
                              payload={})
        s.add(blocker)
    failed = post(paybench, headers, body)
    assert failed.status_code == 500 and failed.json()["code"] == "FAIL"
    bill, payments, events, _ = state(paybench, number)
    assert (bill.status, bill.paid_fen, payments, events) == (BillStatus.open, 0, 0, 0)
    with paybench.db.transaction() as s:
        assert s.execute(select(PaymentNotification.outcome)).scalar_one() is None  # kept for the retry
        s.execute(delete(OutboxEvent).where(OutboxEvent.id == "evt_blocker"))
    assert post(paybench, headers, body).status_code == 204
    bill, payments, events, _ = state(paybench, number)
    assert (bill.status, payments, events) == (BillStatus.paid, 1, 1)
    with paybench.db.transaction() as s:
        receipt = s.execute(select(Payment.receipt_no)).scalar_one()
        paid = select(OutboxEvent.payload).where(OutboxEvent.topic == "payment.succeeded")
        payload = s.execute(paid).scalar_one()
    assert receipt.endswith("-00001") and payload["data"]["payment"]["receipt_no"] == receipt
