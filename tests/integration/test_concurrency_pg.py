"""Concurrency on PostgreSQL: row locks make every payment count once and never overpay a bill."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from db import Database
from erp_sync.outbox import OutboxEvent
from payments import services
from payments.models import AnomalyKind, Bill, Payment, PaymentAnomaly
from tests.fixtures.domain import APPID, MCHID, Builder

THREADS = 20


def _hammer(db: Database, facts_list: list[services.WeChatPaymentFacts]) -> list[services.Outcome]:
    barrier = threading.Barrier(len(facts_list))

    def apply(facts: services.WeChatPaymentFacts) -> services.Outcome:
        barrier.wait()
        with db.transaction() as s:
            return services.apply_wechat_payment(s, facts, appid=APPID, mchid=MCHID).outcome

    with ThreadPoolExecutor(len(facts_list)) as pool:
        return list(pool.map(apply, facts_list))


@pytest.mark.postgres
def test_twenty_threads_applying_one_transaction_record_one_payment(pg_db: Database):
    build = Builder(pg_db)
    bill_id = build.bill(3_800_000)
    facts = build.facts(build.attempt(bill_id), 3_800_000, transaction_id="4200000000000001")
    outcomes = _hammer(pg_db, [facts] * THREADS)
    assert sorted(outcomes).count(services.Outcome.applied) == 1
    assert outcomes.count(services.Outcome.duplicate) == THREADS - 1
    with pg_db.transaction() as s:
        bill = s.get_one(Bill, bill_id)
        assert (bill.paid_fen, bill.status.value) == (3_800_000, "paid")
        assert s.scalar(select(func.count()).select_from(Payment)) == 1
        topics = s.execute(select(OutboxEvent.topic).where(OutboxEvent.bill_id == bill_id)).scalars().all()
        assert sorted(topics) == ["bill.opened", "payment.succeeded"]


@pytest.mark.postgres
def test_twenty_different_payments_never_overpay_and_the_excess_is_anomalies(pg_db: Database):
    build = Builder(pg_db)
    bill_id = build.bill(1_000_000)  # ¥10,000; twenty payments of ¥1,000 arrive at once
    # Twenty attempts of about ¥1,000 (distinct amounts, so each supersedes the previous one and all
    # but the last are late payments on closed attempts); together they are twice the bill.
    amounts = [100_000 + i for i in range(THREADS)]
    facts_list = [build.facts(build.attempt(bill_id, amount), amount) for amount in amounts]
    _hammer(pg_db, facts_list)
    with pg_db.transaction() as s:
        bill = s.get_one(Bill, bill_id)
        payments = s.execute(select(Payment)).scalars().all()
        anomalies = s.execute(select(PaymentAnomaly)).scalars().all()
        assert (bill.paid_fen, bill.status.value) == (1_000_000, "paid")
        assert len(payments) == THREADS  # every fen received is on record
        assert sum(p.amount_fen for p in payments) == sum(amounts)
        assert sum(p.applied_fen for p in payments) == 1_000_000
        assert sum(p.excess_fen for p in payments) == sum(amounts) - 1_000_000
        assert {a.kind for a in anomalies} == {AnomalyKind.overpayment}
        assert sum(a.amount_fen for a in anomalies) == sum(amounts) - 1_000_000
        seqs = (
            s.execute(select(OutboxEvent.seq).where(OutboxEvent.bill_id == bill_id).order_by(OutboxEvent.seq))
            .scalars()
            .all()
        )
        assert seqs == list(range(1, len(seqs) + 1))  # one seq per event, no gaps, no repeats
