"""Reading WeChat's trade bill and classifying its lines against our ledger (pure, no I/O)."""

from __future__ import annotations

import pytest

from payments.trade_bill import OurPayment, OurRefund, TradeBillFormatError, match, parse_trade_bill
from sandbox.wechatpay.bill import DETAIL_HEADER, SUMMARY_HEADER


def line(*fields: str) -> str:
    return ",".join("`" + f for f in fields)


def paid(txid: str, out_trade_no: str, total: str, fee: str) -> str:
    return line(
        "2026-11-25 10:00:00",
        "wxapp",
        "1900000109",
        "0",
        "",
        txid,
        out_trade_no,
        "o_payer",
        "NATIVE",
        "SUCCESS",
        "OTHERS",
        "CNY",
        total,
        "0.00",
        "0",
        "0",
        "0.00",
        "0.00",
        "",
        "",
        "水电改造",
        "",
        fee,
        "0.60%",
        total,
        "0.00",
        "",
    )


def refunded(txid: str, out_refund_no: str, refund: str, fee: str) -> str:
    return line(
        "2026-11-25 12:00:00",
        "wxapp",
        "1900000109",
        "0",
        "",
        txid,
        "B2611-0001-A",
        "o_payer",
        "NATIVE",
        "REFUND",
        "OTHERS",
        "CNY",
        "0.00",
        "0.00",
        "5000001",
        out_refund_no,
        refund,
        "0.00",
        "ORIGINAL",
        "SUCCESS",
        "水电改造",
        "",
        fee,
        "0.60%",
        "0.00",
        refund,
        "",
    )


def bill(*rows: str, count: int | None = None) -> str:
    summary = line(str(len(rows) if count is None else count), "0.00", "0.00", "0.00", "0.00", "0.00", "0.00")
    return "\r\n".join([DETAIL_HEADER, *rows, SUMMARY_HEADER, summary]) + "\r\n"


def test_yuan_amounts_with_backticks_become_fen_exactly() -> None:
    parsed = parse_trade_bill(
        bill(paid("4200A", "B1", "38000.01", "228.00"), refunded("4200A", "R1", "0.05", "-0.00"))
    )
    payment, refund = parsed.rows
    assert (payment.transaction_id, payment.total_fen, payment.fee_fen, payment.is_refund) == (
        "4200A",
        3_800_001,
        22_800,
        False,
    )
    assert (refund.out_refund_no, refund.refund_fen, refund.total_fen, refund.is_refund) == ("R1", 5, 0, True)
    assert parsed.fee_fen == 22_800 and parsed.summary["总交易单数"] == "2"


def test_refund_fees_are_negative_and_summed_with_payment_fees() -> None:
    parsed = parse_trade_bill(
        bill(paid("T1", "B1", "1000.00", "6.00"), refunded("T1", "R1", "500.00", "-3.00"))
    )
    assert parsed.fee_fen == 300


@pytest.mark.parametrize(
    "text",
    ["", "hello,world\r\n", DETAIL_HEADER + "\r\n" + paid("T1", "B1", "1.00", "0.01") + "\r\n"],
    ids=["empty", "not a bill", "no summary"],
)
def test_a_file_that_is_not_a_trade_bill_is_refused(text: str) -> None:
    with pytest.raises(TradeBillFormatError):
        parse_trade_bill(text)


def test_a_summary_that_disagrees_with_the_lines_is_refused() -> None:
    with pytest.raises(TradeBillFormatError):
        parse_trade_bill(bill(paid("T1", "B1", "1.00", "0.01"), count=2))


def test_an_amount_with_three_decimals_is_refused() -> None:
    with pytest.raises(TradeBillFormatError):
        parse_trade_bill(bill(paid("T1", "B1", "1.001", "0.01")))


def test_matching_classifies_every_kind_of_difference() -> None:
    rows = parse_trade_bill(
        bill(
            paid("T-OK", "B1", "100.00", "0.60"),
            paid("T-UNKNOWN", "X1", "7.77", "0.05"),
            paid("T-CHANGED", "B2", "200.00", "1.20"),
            refunded("T-OK", "R-OK", "10.00", "-0.06"),
            refunded("T-OK", "R-LOST", "20.00", "-0.12"),
        )
    ).rows
    payments = {
        "T-OK": OurPayment("T-OK", 10_000, "R2611-00001", True),
        "T-CHANGED": OurPayment("T-CHANGED", 19_900, "R2611-00002", True),
        "T-ONLY-OURS": OurPayment("T-ONLY-OURS", 5_000, "R2611-00003", True),
        "T-OTHER-DAY": OurPayment("T-OTHER-DAY", 5_000, "R2611-00004", False),
    }
    refunds = {
        "R-OK": OurRefund("R-OK", 1_000, "succeeded", True),
        "R-LOST": OurRefund("R-LOST", 2_000, "processing", False),
        "R-ONLY-OURS": OurRefund("R-ONLY-OURS", 300, "succeeded", True),
    }
    found = match(rows, payments, refunds)
    assert (found.matched_payments, found.matched_refunds) == (1, 1)
    assert [(i["type"], i.get("transaction_id"), i.get("out_refund_no")) for i in found.missing_ours] == [
        ("payment", "T-UNKNOWN", None),
        ("refund", "T-OK", "R-LOST"),
    ]
    assert found.missing_ours[1]["ours_status"] == "processing"
    assert [(i["type"], i.get("transaction_id") or i.get("out_refund_no")) for i in found.missing_wechat] == [
        ("payment", "T-ONLY-OURS"),
        ("refund", "R-ONLY-OURS"),
    ]
    assert found.amount_differences == [
        {
            "type": "payment",
            "transaction_id": "T-CHANGED",
            "out_trade_no": "B2",
            "receipt_no": "R2611-00002",
            "wechat_fen": 20_000,
            "ours_fen": 19_900,
        }
    ]
    assert not found.clean


def test_a_day_where_everything_matches_is_clean() -> None:
    rows = parse_trade_bill(bill(paid("T1", "B1", "100.00", "0.60"))).rows
    found = match(rows, {"T1": OurPayment("T1", 10_000, "R1", True)}, {})
    assert found.clean and found.matched_payments == 1
