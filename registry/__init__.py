"""The room registry: rooms, their keys and their epochs, kept in a database.

SQLite (aiosqlite) in the data folder by default, PostgreSQL (asyncpg) when the URL says so;
the schema is created and upgraded by the Alembic revisions shipped in `migrations/`.

    registry = await Registry.open(default_url(data_dir))   # migrates to head
    await registry.import_legacy(data_dir / "ingest" / "rooms.json")

Modules: `records` (the values handed out), `registry` (the `Registry` class), `errors`,
`engine` (URLs, per-backend engine settings, driver errors translated), `tables` and `migrate`
(schema), `legacy` (the rooms.json the registry replaces).
"""

from registry.engine import default_url
from registry.errors import NoSuchRoom, RegistryError, RegistryUnavailable, RoomTaken
from registry.records import EpochRecord, RoomRecord, RoomState
from registry.registry import Registry

__all__ = [
    "EpochRecord",
    "NoSuchRoom",
    "Registry",
    "RegistryError",
    "RegistryUnavailable",
    "RoomRecord",
    "RoomState",
    "RoomTaken",
    "default_url",
]
