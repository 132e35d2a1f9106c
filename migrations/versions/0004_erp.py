"""erp relay: delivery leases, failure window and a pending-per-bill index on outbox_deliveries

Revision ID: 0004_erp
Revises: 0001_core
Create Date: 2026-11-26 20:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_erp"
down_revision = "0001_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("failing_since", sa.DateTime(), nullable=True))
        batch_op.create_index(
            "ix_outbox_deliveries_pending_bill",
            ["subscriber", "bill_id", "seq"],
            unique=False,
            postgresql_where=sa.text("status = 'pending'"),
            sqlite_where=sa.text("status = 'pending'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_deliveries_pending_bill")
        batch_op.drop_column("failing_since")
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("lease_owner")
