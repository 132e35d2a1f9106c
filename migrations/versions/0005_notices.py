"""notices: one row per (event, recipient, kind); also merges the feature heads 0002-0004

Revision ID: 0005_notices
Revises: 0002_chat, 0003_payments, 0004_erp
Create Date: 2026-11-27 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_notices"
down_revision = ("0002_chat", "0003_payments", "0004_erp")
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("recipient", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("template_id", sa.String(length=64), nullable=True),
        sa.Column("msgid", sa.BigInteger(), nullable=True),
        sa.Column("errcode", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=300), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notices")),
        sa.UniqueConstraint("event_id", "recipient", "kind", name="uq_notices_event_recipient_kind"),
    )
    with op.batch_alter_table("notices", schema=None) as batch_op:
        batch_op.create_index("ix_notices_msgid", ["msgid"], unique=False)
        batch_op.create_index(batch_op.f("ix_notices_recipient"), ["recipient"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("notices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notices_recipient"))
        batch_op.drop_index("ix_notices_msgid")
    op.drop_table("notices")
