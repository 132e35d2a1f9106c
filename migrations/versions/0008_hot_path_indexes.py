"""hot-path indexes: a bill's attempts by status; no second index on outbox_events.bill_id

Applying a payment asks whether the bill has other pending attempts. With an index on bill_id alone,
PostgreSQL may AND it with the status index, whose 'pending' entries (dead ones too, until vacuum)
number in the thousands: (bill_id, status) answers from one index. outbox_events.bill_id was indexed
twice: by its own index and as the leading column of uq_outbox_events_bill_seq; every event paid
for both.

Revision ID: 0008_hot_path_indexes
Revises: 0007_wechat_tokens
Create Date: 2026-11-27 05:20:00
"""

from __future__ import annotations

from alembic import op

revision = "0008_hot_path_indexes"
down_revision = "0007_wechat_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payment_attempts", schema=None) as batch_op:
        batch_op.create_index("ix_payment_attempts_bill_status", ["bill_id", "status"], unique=False)
        batch_op.drop_index("ix_payment_attempts_bill_id")
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_events_bill_id")


def downgrade() -> None:
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_events_bill_id", ["bill_id"], unique=False)
    with op.batch_alter_table("payment_attempts", schema=None) as batch_op:
        batch_op.create_index("ix_payment_attempts_bill_id", ["bill_id"], unique=False)
        batch_op.drop_index("ix_payment_attempts_bill_status")
