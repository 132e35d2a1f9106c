"""Who is who for notices (bot/notice_content.Directory): staff openids, the finance roster and when a
customer last wrote. bot/ never imports payments; the composition root hands it this object."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from db import Database
from payments.models import Customer, Staff, StaffRole


class StaffDirectory:
    def __init__(self, db: Database) -> None:
        self.db = db

    def staff_openid(self, staff_id: int) -> str | None:
        with self.db.transaction() as s:
            found = s.execute(
                select(Staff.openid).where(Staff.id == staff_id, Staff.active.is_(True))
            ).scalar_one_or_none()
        return found

    def finance_openids(self) -> list[str]:
        """Every active finance member (admins handle money too, but alerts go to finance's desk)."""
        with self.db.transaction() as s:
            rows = s.execute(
                select(Staff.openid)
                .where(Staff.role == StaffRole.finance, Staff.active.is_(True), Staff.openid.is_not(None))
                .order_by(Staff.id)
            ).scalars()
            return [openid for openid in rows if openid]

    def last_message_at(self, openid: str) -> dt.datetime | None:
        with self.db.transaction() as s:
            found = s.execute(
                select(Customer.last_message_at).where(Customer.openid == openid)
            ).scalar_one_or_none()
        return found
