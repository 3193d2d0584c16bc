"""Epochs: a fencing number and the next media sequence number per room, and one row per epoch.

A room resumed by another owner gets a higher epoch and continues at `next_msn`, so its URLs and
media sequence numbers never go backwards; a stale owner's writes are refused by epoch.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Batch mode so the ALTERs also work on SQLite; existing rows get epoch 0, next_msn 1.
    with op.batch_alter_table("rooms") as batch:
        batch.add_column(sa.Column("epoch", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("next_msn", sa.BigInteger, nullable=False, server_default="1"))
    op.create_table(
        "epochs",
        sa.Column(
            "room",
            sa.String(64),
            sa.ForeignKey("rooms.name", name="epochs_room_fkey"),
            nullable=False,
        ),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("broadcast_id", sa.String(64), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float, nullable=True),
        sa.Column("first_msn", sa.BigInteger, nullable=False),
        sa.Column("last_msn", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("room", "epoch", name="epochs_pkey"),
    )


def downgrade() -> None:
    op.drop_table("epochs")
    with op.batch_alter_table("rooms") as batch:
        batch.drop_column("next_msn")
        batch.drop_column("epoch")
