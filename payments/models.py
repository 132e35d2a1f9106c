"""Money models and their state rules.

Models check their own invariants and change their own state; they never touch Flask, a session
factory, an SDK or the network. Services (payments/services.py) lock rows, call these methods and
emit the outbox event in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import enum
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Date, Enum, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from db import Base, UTCDateTime, utcnow
from payments.errors import AmountExceedsOutstanding, BillNotPayable, IllegalTransition


class StaffRole(StrEnum):
    sales = "sales"
    finance = "finance"
    admin = "admin"


class BillStatus(StrEnum):
    draft = "draft"
    open = "open"
    partially_paid = "partially_paid"
    paid = "paid"
    cancelled = "cancelled"
    void = "void"
    partially_refunded = "partially_refunded"
    refunded = "refunded"


class BillSource(StrEnum):
    chat = "chat"
    erp = "erp"


class AttemptStatus(StrEnum):
    pending = "pending"
    succeeded = "succeeded"
    closed = "closed"
    failed = "failed"


class Channel(StrEnum):
    jsapi = "jsapi"
    native = "native"


class PaymentMethod(StrEnum):
    wechat = "wechat"
    transfer = "transfer"
    cash = "cash"


class RefundStatus(StrEnum):
    pending = "pending"  # stored, not yet accepted by WeChat
    processing = "processing"  # WeChat accepted it, result pending
    succeeded = "succeeded"
    closed = "closed"
    abnormal = "abnormal"
    failed = "failed"  # refused by WeChat before processing


class RefundKind(StrEnum):
    customer = "customer"  # lowers the bill's net paid
    excess = "excess"  # returns money that was never applied to the bill


STAGES = ("定金", "首期款", "中期款", "尾款", "质保金", "增项", "其他")
PAYABLE = frozenset({BillStatus.open, BillStatus.partially_paid})
REFUNDABLE = frozenset({BillStatus.partially_paid, BillStatus.paid, BillStatus.partially_refunded})


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(cls, name=name, native_enum=False, length=24, validate_strings=True)


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    phone: Mapped[str | None] = mapped_column(String(20), index=True)
    openid: Mapped[str | None] = mapped_column(String(64), unique=True)
    erp_ref: Mapped[str | None] = mapped_column(String(64), unique=True)
    last_message_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Staff(Base):
    __tablename__ = "staff"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    role: Mapped[StaffRole] = mapped_column(_enum(StaffRole, "staff_role"))
    openid: Mapped[str | None] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @property
    def can_handle_money(self) -> bool:
        """Offline payments and refunds are finance's (and admin's) job, never sales'."""
        return self.active and self.role in (StaffRole.finance, StaffRole.admin)


class Bill(Base):
    __tablename__ = "bills"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str] = mapped_column(String(16), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    title: Mapped[str] = mapped_column(String(127))
    stage: Mapped[str] = mapped_column(String(16), default="其他")
    contract_no: Mapped[str | None] = mapped_column(String(64))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    paid_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    refunded_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[BillStatus] = mapped_column(_enum(BillStatus, "bill_status"), index=True)
    due_date: Mapped[dt.date | None] = mapped_column(Date)
    issued_by_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    source: Mapped[BillSource] = mapped_column(_enum(BillSource, "bill_source"))
    erp_ref: Mapped[str | None] = mapped_column(String(64), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(Integer, default=0)
    void_reason: Mapped[str | None] = mapped_column(String(200))
    last_reminded_on: Mapped[dt.date | None] = mapped_column(Date)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    opened_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    customer: Mapped[Customer] = relationship(lazy="joined")
    issued_by: Mapped[Staff | None] = relationship()
    attempts: Mapped[list[PaymentAttempt]] = relationship(
        back_populates="bill", order_by="PaymentAttempt.id"
    )
    payments: Mapped[list[Payment]] = relationship(back_populates="bill", order_by="Payment.id")
    refunds: Mapped[list[Refund]] = relationship(back_populates="bill", order_by="Refund.id")

    @property
    def outstanding_fen(self) -> int:
        return self.amount_fen - self.paid_fen if self.status in PAYABLE else 0

    @property
    def net_paid_fen(self) -> int:
        return self.paid_fen - self.refunded_fen

    def _require(self, allowed: frozenset[BillStatus] | set[BillStatus], action: str) -> None:
        if self.status not in allowed:
            raise IllegalTransition(
                f"账单 {self.number} 当前状态为“{STATUS_LABELS[self.status]}”，不能{action}",
                status=str(self.status),
            )

    def open(self, now: dt.datetime) -> None:
        self._require({BillStatus.draft}, "开单")
        self.status = BillStatus.open
        self.opened_at = now

    def cancel_draft(self) -> None:
        self._require({BillStatus.draft}, "取消")
        self.status = BillStatus.cancelled

    def void(self, reason: str) -> None:
        self._require({BillStatus.open}, "作废")
        if self.paid_fen:
            raise IllegalTransition(f"账单 {self.number} 已有收款，不能作废，请走退款")
        self.status = BillStatus.void
        self.void_reason = reason

    def require_payable(self, amount_fen: int) -> None:
        if self.status not in PAYABLE:
            raise BillNotPayable(
                f"账单 {self.number} 当前状态为“{STATUS_LABELS[self.status]}”，不能支付",
                status=str(self.status),
            )
        if amount_fen > self.outstanding_fen:
            raise AmountExceedsOutstanding(
                f"金额超过账单 {self.number} 的待付金额", outstanding_fen=self.outstanding_fen
            )

    def apply_payment(self, amount_fen: int) -> None:
        """Credit money against the bill; the caller has checked ``amount_fen <= outstanding_fen``."""
        self.require_payable(amount_fen)
        self.paid_fen += amount_fen
        self.status = BillStatus.paid if self.paid_fen == self.amount_fen else BillStatus.partially_paid

    def apply_refund(self, amount_fen: int) -> None:
        self._require(REFUNDABLE, "退款")
        if amount_fen > self.net_paid_fen:
            raise AmountExceedsOutstanding("退款金额超过已付金额")
        self.refunded_fen += amount_fen
        self.status = (
            BillStatus.refunded if self.refunded_fen == self.paid_fen else BillStatus.partially_refunded
        )

    def webhook_view(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "erp_ref": self.erp_ref,
            "seq": self.seq,
            "amount_fen": self.amount_fen,
            "paid_fen": self.paid_fen,
            "refunded_fen": self.refunded_fen,
            "status": str(self.status),
            "contract_no": self.contract_no,
            "stage": self.stage,
        }


STATUS_LABELS = {
    BillStatus.draft: "草稿",
    BillStatus.open: "待支付",
    BillStatus.partially_paid: "部分已付",
    BillStatus.paid: "已付清",
    BillStatus.cancelled: "已取消",
    BillStatus.void: "已作废",
    BillStatus.partially_refunded: "部分退款",
    BillStatus.refunded: "已退款",
}


class PaymentAttempt(Base):
    """One order at WeChat Pay. ``succeeded`` is reachable from ``closed``: a late payment."""

    __tablename__ = "payment_attempts"
    __table_args__ = (
        Index("ix_payment_attempts_status_next_check", "status", "next_check_at"),
        # A bill's attempts, and its pending ones (applying a payment asks whether others are open):
        # with bill_id alone the planner may AND it with the status index, whose 'pending' entries
        # (dead ones too, until vacuum) number in the thousands.
        Index("ix_payment_attempts_bill_status", "bill_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bill_id: Mapped[int] = mapped_column(ForeignKey("bills.id"))
    out_trade_no: Mapped[str] = mapped_column(String(32), unique=True)
    channel: Mapped[Channel] = mapped_column(_enum(Channel, "attempt_channel"))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[AttemptStatus] = mapped_column(_enum(AttemptStatus, "attempt_status"))
    payer_openid: Mapped[str | None] = mapped_column(String(64))
    prepay_id: Mapped[str | None] = mapped_column(String(64))
    code_url: Mapped[str | None] = mapped_column(String(256))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    remote_closed: Mapped[bool] = mapped_column(default=False)
    close_reason: Mapped[str | None] = mapped_column(String(32))
    check_count: Mapped[int] = mapped_column(Integer, default=0)
    next_check_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    failure_reason: Mapped[str | None] = mapped_column(String(200))

    bill: Mapped[Bill] = relationship(back_populates="attempts")

    def succeed(self) -> None:
        if self.status not in (AttemptStatus.pending, AttemptStatus.closed):
            raise IllegalTransition(f"attempt {self.out_trade_no} cannot succeed from {self.status}")
        self.status = AttemptStatus.succeeded
        self.next_check_at = None

    def close(self, now: dt.datetime, reason: str) -> None:
        if self.status is not AttemptStatus.pending:
            raise IllegalTransition(f"attempt {self.out_trade_no} cannot close from {self.status}")
        self.status = AttemptStatus.closed
        self.closed_at = now
        self.close_reason = reason

    def fail(self, reason: str) -> None:
        if self.status is not AttemptStatus.pending:
            raise IllegalTransition(f"attempt {self.out_trade_no} cannot fail from {self.status}")
        self.status = AttemptStatus.failed
        self.failure_reason = reason[:200]
        self.next_check_at = None


class Payment(Base):
    """Money received. ``excess_fen`` is the part that could not be applied to the bill (an
    overpayment or a payment on a bill that no longer takes money); it is refunded, never kept."""

    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bill_id: Mapped[int] = mapped_column(ForeignKey("bills.id"), index=True)
    attempt_id: Mapped[int | None] = mapped_column(ForeignKey("payment_attempts.id"))
    method: Mapped[PaymentMethod] = mapped_column(_enum(PaymentMethod, "payment_method"))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    excess_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    refunded_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    transaction_id: Mapped[str | None] = mapped_column(String(32), unique=True)
    receipt_no: Mapped[str] = mapped_column(String(24), unique=True)
    payer_openid: Mapped[str | None] = mapped_column(String(64))
    recorded_by_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    note: Mapped[str | None] = mapped_column(String(200))
    paid_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    bill: Mapped[Bill] = relationship(back_populates="payments")
    attempt: Mapped[PaymentAttempt | None] = relationship()
    refunds: Mapped[list[Refund]] = relationship(back_populates="payment", order_by="Refund.id")

    @property
    def applied_fen(self) -> int:
        return self.amount_fen - self.excess_fen


class Refund(Base):
    __tablename__ = "refunds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bill_id: Mapped[int] = mapped_column(ForeignKey("bills.id"), index=True)
    payment_id: Mapped[int] = mapped_column(ForeignKey("payments.id"), index=True)
    out_refund_no: Mapped[str] = mapped_column(String(64), unique=True)
    request_no: Mapped[str] = mapped_column(String(64), index=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[RefundKind] = mapped_column(_enum(RefundKind, "refund_kind"))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(80))
    status: Mapped[RefundStatus] = mapped_column(_enum(RefundStatus, "refund_status"), index=True)
    source: Mapped[str] = mapped_column(String(16))
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    refund_id: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(String(200))
    check_count: Mapped[int] = mapped_column(Integer, default=0)
    next_check_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    bill: Mapped[Bill] = relationship(back_populates="refunds")
    payment: Mapped[Payment] = relationship(back_populates="refunds")

    @property
    def in_flight(self) -> bool:
        return self.status in (RefundStatus.pending, RefundStatus.processing)


class AnomalyKind(StrEnum):
    overpayment = "overpayment"  # more money than the bill takes; the excess is refunded
    bill_not_payable = "bill_not_payable"  # money on a void/cancelled/refunded bill
    amount_mismatch = "amount_mismatch"  # WeChat's total differs from our attempt's amount
    merchant_mismatch = "merchant_mismatch"  # appid or mchid is not ours
    unknown_order = "unknown_order"  # an out_trade_no we never issued
    refund_abnormal = "refund_abnormal"
    reconciliation = "reconciliation"


class PaymentAnomaly(Base):
    """Money WeChat says arrived but that could not be applied normally. Never silently dropped."""

    __tablename__ = "payment_anomalies"
    __table_args__ = (
        Index(
            "uq_payment_anomalies_kind_transaction",
            "kind",
            "transaction_id",
            unique=True,
            postgresql_where=text("transaction_id IS NOT NULL"),
            sqlite_where=text("transaction_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[AnomalyKind] = mapped_column(_enum(AnomalyKind, "anomaly_kind"))
    bill_id: Mapped[int | None] = mapped_column(ForeignKey("bills.id"), index=True)
    payment_id: Mapped[int | None] = mapped_column(ForeignKey("payments.id"))
    out_trade_no: Mapped[str | None] = mapped_column(String(32))
    transaction_id: Mapped[str | None] = mapped_column(String(32))
    amount_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    resolution: Mapped[str | None] = mapped_column(Text)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
