"""Who can hold a simulated phone: bound staff, bound customers, and followers nobody bound yet."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from db import Database
from handlers.grammar import ROLE_LABELS
from payments.models import Customer, Staff
from sandbox.wechat_api import WeChatApiState


def _masked(phone: str | None) -> str:
    return f"{phone[:3]}****{phone[-4:]}" if phone and len(phone) >= 7 else ""


def list_identities(db: Database, wx: WeChatApiState) -> dict[str, list[dict[str, Any]]]:
    with db.transaction() as s:
        staff = [{"openid": p.openid, "name": p.name, "role": str(p.role),
                  "label": f"{p.name}（{ROLE_LABELS[str(p.role)]}）"}
                 for p in s.scalars(select(Staff).where(Staff.openid.is_not(None), Staff.active.is_(True))
                                    .order_by(Staff.id))]
        customers = [{"openid": c.openid, "name": c.name, "bound": True,
                      "label": f"{c.name}（{_masked(c.phone) or '客户'}）"}
                     for c in s.scalars(select(Customer).where(Customer.openid.is_not(None))
                                        .order_by(Customer.id))]
    known = {p["openid"] for p in staff} | {c["openid"] for c in customers}
    strangers = [{"openid": u["openid"], "name": u["nickname"], "bound": False,
                  "label": f"{u['nickname']}（未绑定）"}
                 for u in wx.users_list() if u["openid"] not in known and u["following"]]
    return {"staff": staff, "customers": customers + strangers}


def known_openids(db: Database) -> list[str]:
    """Every openid RenoPay has bound (the stand-in forgets its followers on restart; WeChat does not)."""
    with db.transaction() as s:
        found = list(s.scalars(select(Staff.openid).where(Staff.openid.is_not(None))))
        found += list(s.scalars(select(Customer.openid).where(Customer.openid.is_not(None))))
    return [o for o in found if o]
