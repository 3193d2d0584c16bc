"""Alembic configured in code, so migrations run from an installed package without alembic.ini.

`upgrade` runs on the registry's own async engine through `run_sync`, which works the same for
aiosqlite and asyncpg. The whole upgrade is one transaction; on PostgreSQL it first takes an
advisory lock, so two nodes starting at once do not both try to create the same tables.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).with_name("migrations")
_PG_LOCK = 7_411_190_200_001  # arbitrary, fixed: the key of the migration advisory lock


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged revisions (`registry/migrations`)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    return cfg


def head() -> str:
    """The newest revision id this package ships."""
    rev = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert rev is not None
    return rev


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the database to `revision`; raises SQLAlchemy/driver errors (callers translate)."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
        await conn.run_sync(_upgrade, revision)


async def current(engine: AsyncEngine) -> str | None:
    """The revision the database is at, None when it has never been migrated."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


def _upgrade(conn: sa.Connection, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)


def _current(conn: sa.Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()
