"""Private rooms and stream keys that can be rotated and revoked.

`rooms.private`: listeners need a signed token (see `hls.tokens`), and the origin serves the
room only under `/private/`. `rooms.key_generation` counts the room's stream keys: it grows
by one whenever the key is rotated or revoked, so every node can tell which speakers were
admitted by a key that no longer counts. A revoked room keeps `key_hash = ''`, which no key
hashes to. Existing rooms stay public, on their first key.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # In place: SQLite adds a NOT NULL column with a default without recreating `rooms`, which
    # would trip the foreign key `epochs` holds on it.
    with op.batch_alter_table("rooms", recreate="never") as batch:
        batch.add_column(sa.Column("private", sa.Boolean, nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("key_generation", sa.Integer, nullable=False,
                                   server_default="1"))


def downgrade() -> None:
    # In place, as 0003 does: recreating `rooms` would trip the foreign key `epochs` holds.
    with op.batch_alter_table("rooms", recreate="never") as batch:
        batch.drop_column("key_generation")
        batch.drop_column("private")
