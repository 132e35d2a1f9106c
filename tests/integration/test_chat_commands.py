"""The commands of docs/chat-commands.md, over HTTP through the push client."""

from __future__ import annotations

import re

from sqlalchemy import select, update

from bot.menu import CONTACT_SERVICE, MENU, MY_BILLS, PAY_HELP
from handlers.models import AuditEntry
from payments.models import BillStatus, Customer, StaffRole
from sandbox import push_client as pc
from tests.fixtures.chat import Chat, new_openid


def _open_bill(chat: Chat, staff: str, command: str = "开单 张三 13800138000 38000 首期款") -> str:
    chat.text(staff, command)
    chat.text(staff, "确认")
    return chat.bills()[-1].number


def test_staff_help_lists_the_commands_of_their_role(chat: Chat) -> None:
    sales, finance = chat.staff(StaffRole.sales), chat.staff(StaffRole.finance)
    assert "收款 <编号>" not in chat.text(sales, "帮助") and "开单" in chat.text(sales, "help")
    assert "收款 <编号> <金额> <转账|现金> [备注]" in chat.text(finance, "帮助")


def test_full_width_text_and_english_aliases_work(chat: Chat) -> None:
    sales = chat.staff(StaffRole.sales)
    preview = chat.text(sales, "ＢＩＬＬ　张三　１３８００１３８０００　３８，０００　首期款")
    assert "¥38,000.00" in preview
    assert "已开单" in chat.text(sales, "OK")


def test_cancel_drops_the_draft_and_a_new_draft_replaces_the_old_one(chat: Chat) -> None:
    sales = chat.staff(StaffRole.sales)
    chat.text(sales, "开单 张三 13800138000 100 定金")
    chat.text(sales, "开单 张三 200 首期款 2099-01-31")
    first, second = chat.bills()
    assert first.status is BillStatus.cancelled and second.status is BillStatus.draft
    assert second.due_date is not None and second.due_date.isoformat() == "2099-01-31"
    assert "已取消草稿" in chat.text(sales, "取消")
    assert "没有待确认的账单" in chat.text(sales, "确认")


def test_show_unpaid_remind_and_void(chat: Chat) -> None:
    sales = chat.staff(StaffRole.sales)
    number = _open_bill(chat, sales)
    assert "待付：¥38,000.00" in chat.text(sales, f"账单 {number.lower()}")
    assert number in chat.text(sales, "未付") and number in chat.text(sales, "未付 张三")
    assert "已安排催款提醒" in chat.text(sales, f"催款 {number}")
    assert "今天已经催过款了" in chat.text(sales, f"催款 {number}")
    assert "已作废" in chat.text(sales, f"作废 {number} 金额写错")
    assert "没有待收款的账单" in chat.text(sales, "未付")


def test_finance_records_an_offline_payment_and_sees_it_in_today_and_receipts(chat: Chat) -> None:
    finance = chat.staff(StaffRole.finance)
    number = _open_bill(chat, finance)
    reply = chat.text(finance, f"收款 {number} 1万 转账 工行尾号1234")
    assert "已登记转账收款 ¥10,000.00" in reply and "部分已付" in reply and "/receipts/" in reply
    today = chat.text(finance, "今日")
    assert "收款：¥10,000.00（1 笔）" in today and "当前待收：¥28,000.00（1 张账单）" in today
    assert "收款：¥10,000.00" in chat.text(finance, "本月")
    assert re.search(r"R\d{4}-\d{5} 转账 ¥10,000.00", chat.text(finance, f"收据 {number}"))


def test_qr_command_answers_success_then_sends_the_native_qr_as_a_customer_service_image(chat: Chat) -> None:
    sales = chat.staff(StaffRole.sales)
    number = _open_bill(chat, sales)
    assert chat.say(sales, f"二维码 {number}").verdict is pc.Verdict.NO_REPLY
    image, caption = chat.custom_messages(sales, 2)[-2:]
    assert image["msgtype"] == "image"
    assert chat.live.wx.media_bytes(image["image"]["media_id"])[0][:4] == b"\x89PNG"
    assert number in caption["text"]["content"]


def test_invited_customer_scans_binds_and_is_greeted(chat: Chat) -> None:
    sales = chat.staff(StaffRole.sales)
    customer = chat.customer(sales, "李四 13900000000")
    assert chat.customer_by_openid(customer).name == "李四"
    assert "已绑定公众号" in chat.text(sales, "邀请 13900000000")


def test_customer_commands_and_menu_keys(chat: Chat) -> None:
    sales = chat.staff(StaffRole.sales)
    customer = chat.customer(sales)
    gh = chat.live.creds.original_id
    assert "没有待支付的账单" in chat.text(customer, "我的账单")
    number = _open_bill(chat, sales)
    click = chat.event(pc.click_event(gh, customer, MY_BILLS))
    assert click.reply["MsgType"] == "news" and number in click.reply["Articles"]["item"]["Title"]
    assert "分次支付" in chat.event(pc.click_event(gh, customer, PAY_HELP)).reply["Content"]
    contact = chat.event(pc.click_event(gh, customer, CONTACT_SERVICE))
    assert contact.reply["MsgType"] == "transfer_customer_service"
    assert chat.say(customer, "人工").reply["MsgType"] == "transfer_customer_service"
    assert "支付 <编号>" in chat.text(customer, "帮助")
    assert chat.say(customer, f"支付{number}").reply["MsgType"] == "news"
    assert "还没有收款记录" in chat.text(customer, f"收据 {number}")


def test_a_plain_follow_is_greeted(chat: Chat) -> None:
    result = chat.event(pc.subscribe_event(chat.live.creds.original_id, new_openid()))
    assert "欢迎关注" in result.reply["Content"]


def test_staff_binding_with_a_used_or_wrong_code_is_refused_and_audited(chat: Chat) -> None:
    stranger = new_openid()
    assert "邀请码无效" in chat.text(stranger, "员工 NOTACODE")
    with chat.live.db.transaction() as s:
        assert s.execute(select(AuditEntry.outcome).where(AuditEntry.openid == stranger)).scalars().all() == [
            "refused"
        ]


def test_cli_staff_invite_prints_a_code_that_binds_once(chat: Chat) -> None:
    args = ["staff", "invite", "--role", "finance", "--name", "赵"]
    result = chat.live.app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 0, result.output
    code = re.search(r"员工 (\w+)", result.output)[1]
    assert "财务" in chat.text(new_openid(), f"员工 {code}")
    assert "邀请码无效" in chat.text(new_openid(), f"员工 {code}")


def test_cli_menu_push_installs_the_menu_at_the_stand_in(chat: Chat) -> None:
    result = chat.live.app.test_cli_runner().invoke(args=["menu", "push"])
    assert result.exit_code == 0, result.output
    assert chat.live.wx.menu == MENU


def test_only_messages_and_window_events_open_the_48_hour_window(chat: Chat) -> None:
    staff = chat.staff()
    customer = chat.customer(staff)
    with chat.live.db.transaction() as s:
        s.execute(update(Customer).where(Customer.openid == customer).values(last_message_at=None))
    chat.event(pc.view_event(chat.live.creds.original_id, customer, "https://example.com/"))
    chat.event(pc.unsubscribe_event(chat.live.creds.original_id, customer))
    found = chat.customer_by_openid(customer)
    assert found is not None and found.last_message_at is None
    chat.text(customer, "帮助")
    found = chat.customer_by_openid(customer)
    assert found is not None and found.last_message_at is not None
