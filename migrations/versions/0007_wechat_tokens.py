"""wechat_tokens: the shared access token when there is no Redis

Revision ID: 0007_wechat_tokens
Revises: 0006_reconcile
Create Date: 2026-11-26 19:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_wechat_tokens"
down_revision = "0006_reconcile"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "wechat_tokens",
        sa.Column("key", sa.String(length=96), nullable=False),
        sa.Column("value", sa.String(length=512), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_wechat_tokens")),
    )


def downgrade() -> None:
    op.drop_table("wechat_tokens")
