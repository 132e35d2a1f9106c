"""reconciliation records (one per bill date) and chat refund previews

Revision ID: 0006_reconcile
Revises: 0005_notices
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_reconcile"
down_revision = "0005_notices"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconciliations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("bill_date", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("totals", sa.JSON(), nullable=False),
        sa.Column("differences", sa.JSON(), nullable=False),
        sa.Column("fees", sa.JSON(), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliations")),
        sa.UniqueConstraint("bill_date", name=op.f("uq_reconciliations_bill_date")),
    )
    op.create_table(
        "chat_pending_refunds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=False),
        sa.Column("bill_id", sa.Integer(), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=80), nullable=False),
        sa.Column("request_no", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["bill_id"], ["bills.id"], name=op.f("fk_chat_pending_refunds_bill_id_bills")),
        sa.ForeignKeyConstraint(["staff_id"], ["staff.id"], name=op.f("fk_chat_pending_refunds_staff_id_staff")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_pending_refunds")),
        sa.UniqueConstraint("staff_id", name=op.f("uq_chat_pending_refunds_staff_id")),
    )


def downgrade() -> None:
    op.drop_table("chat_pending_refunds")
    op.drop_table("reconciliations")
