"""The registry's tables as SQLAlchemy Core sees them at the head migration.

The schema itself is created and changed only by the Alembic revisions in `migrations/`; this
module mirrors the result so queries are typed. `tests/registry/test_migrations.py` compares the
two, so they cannot drift apart.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

rooms = sa.Table(
    "rooms",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("ended_at", sa.Float, nullable=True),
    sa.Column("end_reason", sa.Text, nullable=True),
    sa.Column("broadcast_id", sa.String(64), nullable=True),
    sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_msn", sa.BigInteger, nullable=False, server_default="1"),
    sa.Column("owner", sa.String(64), nullable=True),
    sa.Column("lease_expires", sa.Float, nullable=True),
    sa.Column("private", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("key_generation", sa.Integer, nullable=False, server_default="1"),
    sa.Column("title", sa.String(120), nullable=False, server_default=""),
    sa.Column("description", sa.String(1000), nullable=False, server_default=""),
    sa.Column("audience", sa.Integer, nullable=False, server_default="0"),
    sa.Column("speakers", sa.Text, nullable=False, server_default="[]"),  # JSON display names
    sa.CheckConstraint("state IN ('waiting', 'live', 'ended')", name="rooms_state"),
)

epochs = sa.Table(
    "epochs",
    metadata,
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

nodes = sa.Table(
    "nodes",
    metadata,
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
