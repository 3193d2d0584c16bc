"""Room metadata and what the owner last saw: a title, a description, the audience, the speakers.

`rooms.title` and `rooms.description` are set by operators (empty when unset). `rooms.audience`
and `rooms.speakers` (a JSON list of display names) are written by the node publishing the room,
at most every few seconds and only when they change, so the directory of live rooms is one
read of this table. Existing rooms get an empty title and description, no audience and no
speakers.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # In place, as 0004 does: recreating `rooms` would trip the foreign key `epochs` holds.
    with op.batch_alter_table("rooms", recreate="never") as batch:
        batch.add_column(sa.Column("title", sa.String(120), nullable=False, server_default=""))
        batch.add_column(sa.Column("description", sa.String(1000), nullable=False,
                                   server_default=""))
        batch.add_column(sa.Column("audience", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("speakers", sa.Text, nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("rooms", recreate="never") as batch:
        batch.drop_column("speakers")
        batch.drop_column("audience")
        batch.drop_column("description")
        batch.drop_column("title")
