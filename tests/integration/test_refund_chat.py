"""退款 in chat, end to end over HTTP (WeChat's push client → /wechat → the WeChat Pay stand-in):
preview → 确认, 取消, the finance-only rule, the refusal above the refundable amount, and 今日."""

from __future__ import annotations

import requests
from sqlalchemy import select

from payments import services
from payments.models import (
    AttemptStatus,
    Bill,
    BillSource,
    BillStatus,
    PaymentAttempt,
    Refund,
    RefundStatus,
    StaffRole,
)
from payments.refund_executor import execute_pending_refunds
from payments.runtime import GATEWAY_KEY
from tests.fixtures.chat import Chat, wait_for
from tests.fixtures.live import Live


def paid_bill(live: Live, amount_fen: int = 1_000_000) -> str:
    with live.db.transaction() as s:
        customer = services.find_or_create_customer(s, name="张三", phone="13800138000")
        number = services.issue_bill(
            s,
            customer=customer,
            amount_fen=amount_fen,
            title="水电改造 首期款",
            stage="首期款",
            source=BillSource.erp,
            max_fen=100_000_000,
            open_now=True,
        ).number
    token = live.app.extensions["renopay.links"].pay_token(number)
    assert requests.get(f"{live.url}/pay/{token}/qr.png", timeout=10).status_code == 200
    with live.db.transaction() as s:
        out_trade_no = s.execute(
            select(PaymentAttempt.out_trade_no).where(PaymentAttempt.status == AttemptStatus.pending)
        ).scalar_one()
    live.pay.pay(out_trade_no)
    wait_for(lambda: bill(live, number).status is BillStatus.paid, what="the payment")
    return number


def bill(live: Live, number: str) -> Bill:
    with live.db.transaction() as s:
        found = s.execute(select(Bill).where(Bill.number == number)).scalar_one()
        _ = found.refunds
        return found


def test_finance_refunds_part_of_a_bill_after_a_preview_and_confirmation(chat: Chat, live: Live) -> None:
    finance = chat.staff(StaffRole.finance, "王会计")
    number = paid_bill(live)

    preview = chat.text(finance, f"退款 {number} 100.01 少做一项吊顶")

    assert "请核对退款" in preview and "退款金额：¥100.01（壹佰元零壹分）" in preview
    assert "可退：¥10,000.00" in preview and "原因：少做一项吊顶" in preview
    assert bill(live, number).refunds == []  # nothing happens before 确认
    confirmed = chat.text(finance, "确认")
    assert confirmed.startswith(f"已提交退款 ¥100.01（账单 {number}，退款单号 CR-")
    execute_pending_refunds(live.db, live.app.extensions[GATEWAY_KEY])
    wait_for(lambda: bill(live, number).refunded_fen == 10_001, what="the refund at WeChat")
    (refund,) = bill(live, number).refunds
    assert (refund.status, refund.source, refund.amount_fen) == (RefundStatus.succeeded, "chat", 10_001)
    assert "退款：¥100.01（1 笔）" in chat.text(finance, "今日")
    assert "没有待确认的账单" in chat.text(finance, "确认")  # the preview is used up


def test_a_refund_preview_can_be_cancelled(chat: Chat, live: Live) -> None:
    finance = chat.staff(StaffRole.finance, "王会计")
    number = paid_bill(live)
    chat.text(finance, f"退款 {number} 500 客户取消")

    assert chat.text(finance, "取消") == f"已取消对账单 {number} 的退款。"
    with live.db.transaction() as s:
        assert s.execute(select(Refund)).first() is None


def test_sales_may_not_refund(chat: Chat, live: Live) -> None:
    sales = chat.staff(StaffRole.sales, "李销售")
    number = paid_bill(live)
    assert chat.text(sales, f"退款 {number} 100 多收了") == "你的角色（销售）不能使用“退款”，请联系财务。"


def test_a_refund_above_what_can_be_refunded_is_refused_with_the_limit(chat: Chat, live: Live) -> None:
    finance = chat.staff(StaffRole.finance, "王会计")
    number = paid_bill(live, 200_000)
    assert (
        chat.text(finance, f"退款 {number} 2000.01 多收了") == "退款金额超过可退金额，目前最多可退 ¥2,000.00"
    )
    assert chat.text(finance, f"退款 {number} 100").startswith("格式：退款 <编号> <金额> <原因>")
