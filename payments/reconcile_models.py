"""The daily reconciliation record: one row per bill date, replaced when the day is reconciled again."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Date, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from db import Base, UTCDateTime, utcnow


class ReconcileStatus(StrEnum):
    clean = "clean"  # every line matched, nothing missing on either side
    differences = "differences"  # something to look at (see ``differences``)
    failed = "failed"  # the bill could not be fetched or read; nothing was healed


class Reconciliation(Base):
    __tablename__ = "reconciliations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bill_date: Mapped[dt.date] = mapped_column(Date, unique=True)
    status: Mapped[str] = mapped_column(String(16))
    # {"wechat_rows", "wechat_payments", "wechat_refunds", "matched_payments", "matched_refunds",
    #  "missing_ours", "missing_wechat", "amount_differences", "healed"}
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # {"wechat_paid_fen", "wechat_refunded_fen", "fee_fen", "ours_paid_fen", "ours_refunded_fen"}
    totals: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # {"missing_ours": [...], "missing_wechat": [...], "amount_differences": [...], "error": str?}
    differences: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # WeChat's fee per line, so reports can attribute it: {"payments": {transaction_id: fen},
    # "refunds": {out_refund_no: fen}} (refund fees are negative: returned to us)
    fees: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    runs: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
