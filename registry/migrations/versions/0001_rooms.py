"""Rooms as `{data_dir}/ingest/rooms.json` held them.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "rooms",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("ended_at", sa.Float, nullable=True),
        sa.Column("end_reason", sa.Text, nullable=True),
        sa.Column("broadcast_id", sa.String(64), nullable=True),
        sa.CheckConstraint("state IN ('waiting', 'live', 'ended')", name="rooms_state"),
    )


def downgrade() -> None:
    op.drop_table("rooms")
