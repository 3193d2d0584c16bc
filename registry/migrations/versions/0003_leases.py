"""Leases and the node directory: a room is owned by at most one ingest node at a time.

`rooms.owner` and `rooms.lease_expires` are the lease, taken and renewed by conditional UPDATEs;
taking a room also bumps `rooms.epoch`, the fencing number. `nodes` lists the ingest nodes
sharing the database, with the load they last reported.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Batch mode so the ALTERs also work on SQLite; existing rooms start unowned.
    with op.batch_alter_table("rooms") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=True))
        batch.add_column(sa.Column("lease_expires", sa.Float, nullable=True))
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("internal_url", sa.Text, nullable=False),
        sa.Column("control_url", sa.Text, nullable=False),
        sa.Column("rtmp_port", sa.Integer, nullable=False),
        sa.Column("rooms", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cpu", sa.Float, nullable=False, server_default="0"),
        sa.Column("capacity", sa.Integer, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("draining", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_table("nodes")
    # In place (SQLite 3.35+ drops a plain column): recreating `rooms` would trip the foreign
    # key `epochs` holds on it.
    with op.batch_alter_table("rooms", recreate="never") as batch:
        batch.drop_column("lease_expires")
        batch.drop_column("owner")
