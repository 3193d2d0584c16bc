"""The room registry: rooms, their keys, epochs and leases, and the ingest nodes, in a database.

SQLite (aiosqlite) in the data folder by default, PostgreSQL (asyncpg) when the URL says so;
the schema is created and upgraded by the Alembic revisions shipped in `migrations/`.

    registry = await Registry.open(default_url(data_dir))   # migrates to head
    await registry.import_legacy(data_dir / "ingest" / "rooms.json")

Several ingest nodes share one database. Each is in the node directory, and owns a room through
a lease that comes with a new epoch (the fencing number its writes carry):

    await registry.register_node(NodeInfo("n1", internal_url, control_url, 1935, 0, 0.0, 50, t))
    await registry.heartbeat("n1", rooms=3, cpu=0.4, draining=False)   # every few seconds
    await registry.nodes()                       # alive nodes, least loaded first
    lease = await registry.take_room("r", "n1", ttl=10.0)  # None: another node holds it
    renewed = await registry.renew_leases("n1", ["r"], ttl=10.0)  # {"r": expiry}; absent = lost
    await registry.advance("r", lease.epoch, next_msn)     # False: fenced, a newer owner exists
    await registry.release_room("r", "n1", lease.epoch)
    await registry.owner_of("r")                 # Owner(node, epoch, expires, internal_url)
    await registry.rooms_to_adopt()              # live rooms whose owner's lease ran out

A room has a title and a description (`set_room_info`); its owner writes what it sees of a
live room, the audience and the speakers' names (`record_presence`), so the directory of
public rooms is one read (`public_rooms`).

A room may be private (`create_room(..., private=True)`: listeners need a signed token), and
its stream key can be replaced or revoked (`replace_key`); `key_generation` counts the keys, so
every node can tell which speakers an old key admitted.

A lease that cannot be renewed (RegistryUnavailable) must be given up by its owner before its
last renewed expiry; after that, another node may take the room with a higher epoch.

Modules: `records` (the values handed out), `registry` (the `Registry` class), `leases` (who
owns a room), `directory` (the nodes), `errors`, `engine` (URLs, per-backend engine settings,
driver errors translated), `tables` and `migrate` (schema), `legacy` (the rooms.json the
registry replaces).
"""

from registry.engine import DB_FILE, default_url
from registry.errors import (
    NoSuchNode,
    NoSuchRoom,
    RegistryError,
    RegistryUnavailable,
    RoomClosed,
    RoomTaken,
)
from registry.records import (
    REVOKED_KEY_HASH,
    EpochRecord,
    Lease,
    NodeInfo,
    Owner,
    Presence,
    RoomListing,
    RoomRecord,
    RoomState,
)
from registry.registry import Registry

__all__ = [
    "DB_FILE",
    "EpochRecord",
    "Lease",
    "NoSuchNode",
    "NoSuchRoom",
    "NodeInfo",
    "Owner",
    "Presence",
    "Registry",
    "RegistryError",
    "REVOKED_KEY_HASH",
    "RegistryUnavailable",
    "RoomClosed",
    "RoomListing",
    "RoomRecord",
    "RoomState",
    "RoomTaken",
    "default_url",
]
