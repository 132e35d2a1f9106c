"""Binding a WeChat openid: staff by one-time invite code, customers by a parametric-QR scene."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import unicodedata

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.replies import Reply, TextReply
from db import utcnow
from handlers.context import Ctx
from handlers.grammar import ROLE_LABELS
from handlers.models import QrScene, StaffInvite
from payments.models import Customer, Staff, StaffRole

_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L: read aloud and typed on phones
INVITE_FAILED = "邀请码无效或已过期，请向管理员重新获取。"


def _hash(code: str) -> str:
    clean = unicodedata.normalize("NFKC", code).strip().upper().replace("-", "")
    return hashlib.sha256(clean.encode()).hexdigest()


def create_invite(session: Session, role: StaffRole, *, name: str | None = None, days: int = 7) -> str:
    code = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(10))
    session.add(StaffInvite(code_hash=_hash(code), role=str(role), name=name,
                            expires_at=utcnow() + dt.timedelta(days=days)))
    return code


def bind_staff(ctx: Ctx, code: str) -> Reply:
    if ctx.staff is not None:
        return TextReply(f"你已经是员工（{ROLE_LABELS[str(ctx.staff.role)]}），无需再次绑定。")
    invite = ctx.session.execute(
        select(StaffInvite).where(StaffInvite.code_hash == _hash(code)).with_for_update()
    ).scalar_one_or_none()
    if invite is None or invite.used_at is not None or invite.expires_at <= utcnow():
        ctx.audit("bind_staff", "refused")
        return TextReply(INVITE_FAILED)
    staff = ctx.session.execute(select(Staff).where(Staff.openid == ctx.openid)).scalar_one_or_none()
    if staff is None:
        staff = Staff(name=invite.name or "员工", role=StaffRole(invite.role), openid=ctx.openid)
        ctx.session.add(staff)
    staff.role, staff.active = StaffRole(invite.role), True
    ctx.session.flush()
    invite.used_at, invite.staff_id = utcnow(), staff.id
    ctx.staff = staff
    ctx.audit("bind_staff", "ok", role=invite.role)
    return TextReply(f"绑定成功，你的角色：{ROLE_LABELS[invite.role]}。发送“帮助”查看员工命令。")


def new_scene(session: Session, customer: Customer, staff: Staff, days: int = 30) -> QrScene:
    scene = QrScene(scene="cust_" + secrets.token_hex(12), customer_id=customer.id, staff_id=staff.id,
                    expires_at=utcnow() + dt.timedelta(days=days))
    session.add(scene)
    session.flush()
    return scene


def bind_scene(ctx: Ctx, scene_key: str) -> str:
    """Bind the sender to the customer of a scanned scene; the sentence to tell them."""
    scene = ctx.session.execute(select(QrScene).where(QrScene.scene == scene_key)).scalar_one_or_none()
    if scene is None or scene.expires_at <= utcnow():
        return "这个二维码已失效，请联系工作人员重新获取。"
    customer = ctx.session.get_one(Customer, scene.customer_id, with_for_update=True)
    if customer.openid == ctx.openid:
        return f"{customer.name}，您的微信已绑定客户资料。"
    if ctx.customer is not None:
        return "您的微信已绑定其他客户资料，如需更改请联系工作人员。"
    if customer.openid:
        return "该客户资料已绑定其他微信，如需更改请联系工作人员。"
    customer.openid = ctx.openid
    scene.bound_openid, scene.bound_at = ctx.openid, utcnow()
    ctx.customer = customer
    return f"{customer.name}，已为您绑定客户资料。"
