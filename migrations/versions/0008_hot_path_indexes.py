"""hot-path indexes: a bill's attempts by status; none that no query uses on the outbox

Applying a payment asks whether the bill has other pending attempts. With an index on bill_id alone,
PostgreSQL may AND it with the status index, whose 'pending' entries (dead ones too, until vacuum)
number in the thousands: (bill_id, status) answers from one index. Every payment writes an event and
its deliveries, and pays for each of their indexes; dropped: outbox_events.bill_id (also the leading
column of uq_outbox_events_bill_seq), outbox_events.topic (no query filters on it) and
outbox_deliveries (subscriber, bill_id, seq) (the relay's "earlier event still pending?" probe uses
the partial ix_outbox_deliveries_pending_bill; nothing else reads it).

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
        batch_op.drop_index("ix_outbox_events_topic")
    with op.batch_alter_table("outbox_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_deliveries_bill_order")


def downgrade() -> None:
    with op.batch_alter_table("outbox_deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_deliveries_bill_order", ["subscriber", "bill_id", "seq"], unique=False)
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_events_topic", ["topic"], unique=False)
        batch_op.create_index("ix_outbox_events_bill_id", ["bill_id"], unique=False)
    with op.batch_alter_table("payment_attempts", schema=None) as batch_op:
        batch_op.create_index("ix_payment_attempts_bill_id", ["bill_id"], unique=False)
        batch_op.drop_index("ix_payment_attempts_bill_status")
