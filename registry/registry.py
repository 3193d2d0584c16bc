"""`Registry`: rooms and their epochs kept in a database, shared by every node that opens it.

Every method is one short transaction through an async driver and returns immutable records.
A room's epoch and next media sequence number only ever grow, and each is changed by a single
conditional UPDATE: concurrent callers (tasks or nodes) are never handed the same epoch, and a
stale owner is told so instead of overwriting a newer one's progress.

Several nodes share one database: a room is owned through a lease (`take_room`, renewed by
`renew_leases`, see `registry.leases`) that hands out the next epoch with it, and each node
reports itself in the node directory (`register_node`, `heartbeat`, see `registry.directory`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import registry.directory as directory
import registry.leases as leases
from registry.clock import DatabaseClock, Time
from registry.engine import READ_ONLY, describe, make_engine, parse_url, redact, translated
from registry.errors import NoSuchRoom, RegistryError, RoomClosed, RoomTaken
from registry.legacy import IMPORTED_SUFFIX, parse_rooms_json
from registry.migrate import upgrade as upgrade_schema
from registry.records import (
    EpochRecord,
    Lease,
    NodeInfo,
    Owner,
    Presence,
    RoomListing,
    RoomRecord,
    RoomState,
)
from registry.tables import epochs, rooms


class Registry:
    """The room registry on one database. Open with `await Registry.open(url)`."""

    def __init__(self, engine: AsyncEngine, url: URL, longest_call: float) -> None:
        self._engine = engine
        self._describe = describe(url)
        # How long one call can take before it fails whatever the database does: a bound
        # for whoever gave up on a call and waits for it to let go.
        self.longest_call = longest_call

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        migrate: bool = True,
        connect_timeout: float = 3.0,
        command_timeout: float = 5.0,
    ) -> Registry:
        """Connect (and with `migrate`, upgrade the schema to head) or raise RegistryUnavailable.

        `connect_timeout` bounds opening a PostgreSQL connection; `command_timeout` bounds one
        statement (PostgreSQL) or the wait for SQLite's write lock. A refused connection fails
        at once; a server that accepts but never answers fails within about the sum of both.
        """
        parsed = parse_url(url)
        engine = make_engine(
            parsed, connect_timeout=connect_timeout, command_timeout=command_timeout
        )
        registry = cls(engine, parsed, connect_timeout + command_timeout)
        try:
            with translated(f"cannot open registry {redact(parsed)}"):
                if migrate:
                    await upgrade_schema(engine)
                else:
                    await registry._select_one()
        except BaseException:
            await engine.dispose()
            raise
        return registry

    async def close(self) -> None:
        with translated(f"registry {self._describe}: close"):
            await self._engine.dispose()

    def describe(self) -> str:
        """Backend and location, never credentials: `postgresql 127.0.0.1:5432/townsquare`."""
        return self._describe

    async def ping(self) -> None:
        """Raises RegistryUnavailable when the database cannot be reached."""
        with translated(f"registry {self._describe}: ping"):
            await self._select_one()

    # --- rooms ------------------------------------------------------------------------
    async def create_room(self, name: str, key_hash: str, created_at: float,
                          private: bool = False, title: str = "",
                          description: str = "") -> RoomRecord:
        """A new waiting room, or an ended one reused under the same name (keeping its epoch
        and next_msn, so the name's URLs and sequence numbers never go backwards; its key
        generation moves on, so nothing admitted by the old key counts; its title,
        description, audience and speakers start afresh).

        Raises RoomTaken when a waiting or live room has that name.
        """
        async with self._write(f"create room {name!r}") as conn:
            row = (
                await conn.execute(
                    sa.select(rooms.c.state).where(rooms.c.name == name).with_for_update()
                )
            ).first()
            if row is None:
                try:
                    await conn.execute(
                        sa.insert(rooms).values(
                            name=name, key_hash=key_hash, state="waiting",
                            created_at=created_at, epoch=0, next_msn=1, private=private,
                            key_generation=1, title=title, description=description,
                        )
                    )
                except sa_exc.IntegrityError as exc:  # created by someone else meanwhile
                    raise RoomTaken(f"room {name!r} already exists") from exc
                return await self._room(conn, name)
            if row.state != "ended":
                raise RoomTaken(f"room {name!r} is {row.state}")
            return await self._update_room(
                conn, name,
                key_hash=key_hash, state="waiting", created_at=created_at,
                started_at=None, ended_at=None, end_reason=None, broadcast_id=None,
                private=private, key_generation=rooms.c.key_generation + 1,
                title=title, description=description, audience=0, speakers="[]",
            )

    async def get_room(self, name: str) -> RoomRecord | None:
        async with self._read(f"get room {name!r}") as conn:
            row = (await conn.execute(sa.select(rooms).where(rooms.c.name == name))).first()
            return None if row is None else _room_record(row)

    async def room_by_key(self, key_hash: str) -> RoomRecord | None:
        """The open room whose stream key hashes to `key_hash` (keys are 192 random bits, so
        their SHA-256 can be looked up directly)."""
        found = await self._rooms(f"room by key {key_hash[:8]}…",
                                  sa.and_(rooms.c.key_hash == key_hash, rooms.c.state != "ended"))
        return found[0] if found else None

    async def list_rooms(self) -> list[RoomRecord]:
        """Every room, ordered by name."""
        return await self._rooms("list rooms", None)

    async def open_rooms(self) -> list[RoomRecord]:
        """Waiting and live rooms, ordered by name."""
        return await self._rooms("list open rooms", rooms.c.state != "ended")

    async def live_rooms(self) -> list[RoomRecord]:
        """Live rooms, ordered by name: what a restarted service must resume."""
        return await self._rooms("list live rooms", rooms.c.state == "live")

    async def set_room_info(self, name: str, title: str | None = None,
                            description: str | None = None) -> RoomRecord:
        """Change a room's title and description (None: unchanged), whatever its state: an
        ended room's title still shows beside its recording. Raises NoSuchRoom."""
        values = {key: value for key, value in (("title", title), ("description", description))
                  if value is not None}
        async with self._write(f"set title of room {name!r}") as conn:
            if not values:
                return await self._room(conn, name)
            return await self._update_room(conn, name, **values)

    async def record_presence(self, seen: Mapping[str, Presence],
                              node: str | None = None) -> None:
        """Write each room's audience and speaker names as the node publishing it saw them,
        in one transaction. Rooms no longer live are left alone, and so, with `node`, are
        rooms whose lease another node holds now (its view is the newer one)."""
        if not seen:
            return
        query = (sa.update(rooms)
                 .where(rooms.c.name == sa.bindparam("room"), rooms.c.state == "live")
                 .values(audience=sa.bindparam("seen_audience"),
                         speakers=sa.bindparam("seen_speakers")))
        if node is not None:
            query = query.where(rooms.c.owner == node)
        rows = [{"room": name, "seen_audience": p.audience,
                 "seen_speakers": json.dumps(list(p.speakers))} for name, p in seen.items()]
        async with self._write(f"presence of {len(rows)} rooms") as conn:
            await conn.execute(query, rows)

    async def public_rooms(self, replays: int = 50, live: int = 1000) -> RoomListing:
        """What a directory of rooms lists, in one read: public live rooms (longest on air
        first, at most `live`) and public ended rooms that went on air, so have a recording
        (newest end first, at most `replays`)."""
        public = rooms.c.private == sa.false()
        on_air = (sa.select(rooms).where(public, rooms.c.state == "live")
                  .order_by(sa.func.coalesce(rooms.c.started_at, rooms.c.created_at),
                            rooms.c.name)
                  .limit(live))
        ended = (sa.select(rooms)
                 .where(public, rooms.c.state == "ended", rooms.c.broadcast_id.is_not(None),
                        rooms.c.started_at.is_not(None))
                 .order_by(rooms.c.ended_at.desc(), rooms.c.name)
                 .limit(replays))
        async with self._read("list public rooms") as conn:
            found = [_room_record(row) for row in await conn.execute(on_air)]
            done = [_room_record(row) for row in await conn.execute(ended)]
        return RoomListing(tuple(found), tuple(done))

    async def set_key_hash(self, name: str, key_hash: str) -> RoomRecord:
        async with self._write(f"set key of room {name!r}") as conn:
            return await self._update_room(conn, name, key_hash=key_hash)

    async def replace_key(self, name: str, key_hash: str) -> RoomRecord:
        """Rotate (a new key's hash) or revoke (`REVOKED_KEY_HASH`) an open room's stream key.

        The key generation grows in the same UPDATE, so of two concurrent rotations each gets
        its own generation and the later one's key is the one that counts. Raises NoSuchRoom
        for an unknown room and RoomClosed for an ended one (its key is dead already).
        """
        async with self._write(f"replace key of room {name!r}") as conn:
            row = (
                await conn.execute(
                    sa.update(rooms)
                    .where(rooms.c.name == name, rooms.c.state != "ended")
                    .values(key_hash=key_hash, key_generation=rooms.c.key_generation + 1)
                    .returning(*rooms.c)
                )
            ).first()
            if row is not None:
                return _room_record(row)
            await self._room(conn, name)  # NoSuchRoom when there is none
            raise RoomClosed(f"room {name!r} has ended: its key cannot change")

    async def private_rooms(self, names: list[str]) -> dict[str, bool]:
        """Whether each known room among `names` is private; unknown rooms are absent."""
        if not names:
            return {}
        async with self._read(f"privacy of {len(names)} rooms") as conn:
            found = await conn.execute(
                sa.select(rooms.c.name, rooms.c.private).where(rooms.c.name.in_(names)))
            return {row.name: bool(row.private) for row in found}

    async def go_live(self, name: str, broadcast_id: str, started_at: float) -> RoomRecord:
        async with self._write(f"room {name!r} go live") as conn:
            return await self._update_room(
                conn, name, state="live", broadcast_id=broadcast_id, started_at=started_at
            )

    async def end_room(self, name: str, ended_at: float, reason: str) -> RoomRecord:
        """The room ends; its broadcast id, epoch and next_msn stay for the record."""
        async with self._write(f"end room {name!r}") as conn:
            return await self._update_room(
                conn, name, state="ended", ended_at=ended_at, end_reason=reason
            )

    # --- epochs -----------------------------------------------------------------------
    async def start_epoch(self, name: str, broadcast_id: str, started_at: float) -> EpochRecord:
        """The room's next epoch, starting at its next_msn. Numbers are never handed out twice:
        the increment happens in the UPDATE itself, which row locks serialize."""
        async with self._write(f"start epoch of room {name!r}") as conn:
            row = (
                await conn.execute(
                    sa.update(rooms)
                    .where(rooms.c.name == name)
                    .values(epoch=rooms.c.epoch + 1)
                    .returning(rooms.c.epoch, rooms.c.next_msn)
                )
            ).first()
            if row is None:
                raise NoSuchRoom(f"no room named {name!r}")
            record = EpochRecord(
                room=name, epoch=int(row.epoch), broadcast_id=broadcast_id,
                started_at=started_at, ended_at=None, first_msn=int(row.next_msn), last_msn=None,
            )
            await conn.execute(
                sa.insert(epochs).values(
                    room=record.room, epoch=record.epoch, broadcast_id=record.broadcast_id,
                    started_at=record.started_at, ended_at=None,
                    first_msn=record.first_msn, last_msn=None,
                )
            )
            return record

    async def advance(self, name: str, epoch: int, next_msn: int) -> bool:
        """Record that the segments below `next_msn` exist. next_msn never moves backwards.

        Returns False, changing nothing, when the room is past `epoch`: a newer owner exists.
        """
        async with self._write(f"advance room {name!r}") as conn:
            moved = await conn.execute(
                sa.update(rooms)
                .where(
                    rooms.c.name == name,
                    rooms.c.epoch == epoch,
                    rooms.c.next_msn < next_msn,
                )
                .values(next_msn=next_msn)
            )
            if moved.rowcount == 1:
                await conn.execute(
                    sa.update(epochs)
                    .where(epochs.c.room == name, epochs.c.epoch == epoch)
                    .values(last_msn=next_msn - 1)
                )
                return True
            current = await conn.scalar(sa.select(rooms.c.epoch).where(rooms.c.name == name))
            if current is None:
                raise NoSuchRoom(f"no room named {name!r}")
            return int(current) == epoch

    async def end_epoch(self, name: str, epoch: int, ended_at: float) -> None:
        """Close an epoch; ending one that is already ended keeps the first end time."""
        async with self._write(f"end epoch {epoch} of room {name!r}") as conn:
            ended = await conn.execute(
                sa.update(epochs)
                .where(
                    epochs.c.room == name, epochs.c.epoch == epoch, epochs.c.ended_at.is_(None)
                )
                .values(ended_at=ended_at)
            )
            if ended.rowcount == 1:
                return
            found = await conn.scalar(
                sa.select(epochs.c.epoch).where(epochs.c.room == name, epochs.c.epoch == epoch)
            )
            if found is not None:
                return
            if await conn.scalar(sa.select(rooms.c.name).where(rooms.c.name == name)) is None:
                raise NoSuchRoom(f"no room named {name!r}")
            raise RegistryError(f"room {name!r} has no epoch {epoch}")

    async def epochs(self, name: str, broadcast_id: str | None = None) -> list[EpochRecord]:
        """The room's epochs (of one broadcast, if given), ordered by epoch."""
        query = sa.select(epochs).where(epochs.c.room == name).order_by(epochs.c.epoch)
        if broadcast_id is not None:
            query = query.where(epochs.c.broadcast_id == broadcast_id)
        async with self._read(f"list epochs of room {name!r}") as conn:
            return [_epoch_record(row) for row in await conn.execute(query)]

    # --- leases -----------------------------------------------------------------------
    async def take_room(
        self, name: str, node: str, ttl: float, now: float | None = None,
        go_live: str | None = None,
    ) -> Lease | None:
        """Make `node` the room's owner until `now + ttl`, with a new epoch; None when another
        node holds a live lease. Taking a room `node` already holds also starts a new epoch.

        One conditional UPDATE decides, so of any number of nodes racing for a free room
        exactly one wins. A live room's new epoch is recorded in `epochs` as `start_epoch`
        would (same broadcast, from next_msn), so do not call `start_epoch` for it as well.
        With `go_live`, a waiting room goes live with that broadcast id in the same write.
        An ended room cannot be taken. Raises NoSuchRoom for an unknown room.
        """
        ttl, clock = _ttl(ttl), _now(now)
        async with self._write(f"node {node!r} take room {name!r}") as conn:
            return await leases.take(conn, name, node, clock + ttl, clock, go_live)

    async def renew_leases(
        self, node: str, rooms: list[str], ttl: float, now: float | None = None
    ) -> dict[str, float]:
        """Extend to `now + ttl` the leases `node` still holds live among `rooms`.

        Returns `{room: new expiry}`; a room missing from it is lost (taken by another node,
        released, or expired): stop publishing it. When this raises (RegistryUnavailable), the
        leases run out at the expiry of the last renewal that succeeded.
        """
        ttl, clock = _ttl(ttl), _now(now)
        if not rooms:
            return {}
        async with self._write(f"node {node!r} renew {len(rooms)} leases") as conn:
            return await leases.renew(conn, node, rooms, clock + ttl, clock)

    async def release_room(self, name: str, node: str, epoch: int) -> bool:
        """Give the room up, if `node` still holds it at `epoch`; False, changing nothing,
        otherwise (a newer owner or epoch exists, or the room is unknown)."""
        async with self._write(f"node {node!r} release room {name!r}") as conn:
            return await leases.release(conn, name, node, epoch)

    async def owner_of(self, name: str, now: float | None = None) -> Owner | None:
        """The holder of the room's live lease and its internal URL; None when the room is
        unknown, unowned or its lease expired."""
        async with self._read(f"owner of room {name!r}") as conn:
            return await leases.owner(conn, name, _now(now))

    async def rooms_to_adopt(self, now: float | None = None) -> list[RoomRecord]:
        """Live rooms without a live lease (their owner crashed or was cut off), longest live
        first: what a node with spare capacity should take over."""
        query = (
            sa.select(rooms)
            .where(leases.orphaned(_now(now)))
            .order_by(sa.func.coalesce(rooms.c.started_at, rooms.c.created_at), rooms.c.name)
        )
        async with self._read("list rooms to adopt") as conn:
            return [_room_record(row) for row in await conn.execute(query)]

    # --- node directory ---------------------------------------------------------------
    async def register_node(self, node: NodeInfo) -> None:
        """Add the node to the directory, or overwrite its row (a restarted node)."""
        async with self._write(f"register node {node.id!r}") as conn:
            await directory.upsert(conn, node)

    async def heartbeat(
        self, node: str, rooms: int, cpu: float, draining: bool, now: float | None = None
    ) -> None:
        """Report the node alive at `now` with its load. Raises NoSuchNode when it is not
        registered (forgotten meanwhile): register it again."""
        async with self._write(f"heartbeat of node {node!r}") as conn:
            await directory.heartbeat(conn, node, rooms, cpu, draining, _now(now))

    async def nodes(self, now: float | None = None, alive_within: float = 10.0) -> list[NodeInfo]:
        """Nodes whose last heartbeat is at most `alive_within` seconds old: the ones accepting
        rooms first, least loaded first (rooms/capacity, then cpu), draining ones last."""
        async with self._read("list nodes") as conn:
            return await directory.alive(conn, _now(now) - alive_within)

    async def forget_node(self, node: str) -> None:
        """Remove the node from the directory (nothing if absent); its leases run out alone."""
        async with self._write(f"forget node {node!r}") as conn:
            await directory.forget(conn, node)

    # --- the file the registry replaces -----------------------------------------------
    async def import_legacy(self, path: Path) -> int:
        """Import rooms from the old `rooms.json`, once: rooms not in the database yet are
        inserted, then the file is renamed to `rooms.json.imported`. Returns how many.

        A missing file imports nothing. A file that cannot be read or parsed raises
        RegistryError naming it, and is left where it is.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            raise RegistryError(f"cannot read legacy room file {path}: {exc}") from exc
        try:
            found = parse_rooms_json(text)
        except ValueError as exc:
            raise RegistryError(
                f"legacy room file {path} is not valid ({exc}); fix or move it, then restart"
            ) from exc
        async with self._write(f"import legacy rooms from {path}") as conn:
            names = [room.name for room in found]
            known = set(
                await conn.scalars(sa.select(rooms.c.name).where(rooms.c.name.in_(names)))
            )
            new = [room for room in found if room.name not in known]
            if new:
                await conn.execute(sa.insert(rooms), [_room_values(room) for room in new])
        try:
            path.replace(path.with_name(path.name + IMPORTED_SUFFIX))
        except OSError as exc:
            raise RegistryError(f"imported {path} but cannot rename it: {exc}") from exc
        return len(new)

    # --- internals --------------------------------------------------------------------
    @asynccontextmanager
    async def _write(self, action: str) -> AsyncIterator[AsyncConnection]:
        with translated(f"registry {self._describe}: {action}"):
            async with self._engine.begin() as conn:
                yield conn

    @asynccontextmanager
    async def _read(self, action: str) -> AsyncIterator[AsyncConnection]:
        with translated(f"registry {self._describe}: {action}"):
            async with self._engine.connect() as conn:
                await conn.execution_options(**{READ_ONLY: True})
                yield conn

    async def _select_one(self) -> None:
        async with self._engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            await conn.execute(sa.text("SELECT 1"))

    async def _rooms(self, action: str, where: sa.ColumnElement[bool] | None) -> list[RoomRecord]:
        query = sa.select(rooms).order_by(rooms.c.name)
        if where is not None:
            query = query.where(where)
        async with self._read(action) as conn:
            return [_room_record(row) for row in await conn.execute(query)]

    async def _room(self, conn: AsyncConnection, name: str) -> RoomRecord:
        row = (await conn.execute(sa.select(rooms).where(rooms.c.name == name))).first()
        if row is None:
            raise NoSuchRoom(f"no room named {name!r}")
        return _room_record(row)

    async def _update_room(self, conn: AsyncConnection, name: str, **values: Any) -> RoomRecord:
        row = (
            await conn.execute(
                sa.update(rooms).where(rooms.c.name == name).values(**values).returning(*rooms.c)
            )
        ).first()
        if row is None:
            raise NoSuchRoom(f"no room named {name!r}")
        return _room_record(row)


def _room_record(row: sa.Row[Any]) -> RoomRecord:
    return RoomRecord(
        name=row.name,
        key_hash=row.key_hash,
        state=cast(RoomState, row.state),
        created_at=float(row.created_at),
        started_at=_float(row.started_at),
        ended_at=_float(row.ended_at),
        end_reason=row.end_reason,
        broadcast_id=row.broadcast_id,
        epoch=int(row.epoch),
        next_msn=int(row.next_msn),
        owner=row.owner,
        lease_expires=_float(row.lease_expires),
        private=bool(row.private),
        key_generation=int(row.key_generation),
        title=row.title or "",
        description=row.description or "",
        audience=int(row.audience or 0),
        speaker_names=_names(row.speakers),
    )


def _epoch_record(row: sa.Row[Any]) -> EpochRecord:
    return EpochRecord(
        room=row.room,
        epoch=int(row.epoch),
        broadcast_id=row.broadcast_id,
        started_at=float(row.started_at),
        ended_at=_float(row.ended_at),
        first_msn=int(row.first_msn),
        last_msn=None if row.last_msn is None else int(row.last_msn),
    )


def _room_values(room: RoomRecord) -> dict[str, Any]:
    values = {field.name: getattr(room, field.name) for field in dataclasses.fields(room)}
    values["speakers"] = json.dumps(list(values.pop("speaker_names")))
    return values


def _names(text: str | None) -> tuple[str, ...]:
    """Speaker names as stored (a JSON list); nothing for anything else."""
    try:
        found = json.loads(text or "[]")
    except ValueError:
        return ()
    return tuple(str(n) for n in found) if isinstance(found, list) else ()


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _now(now: float | None) -> Time:
    """`now` when the caller gave one (tests), else the database's clock (`registry.clock`),
    read by the statement that compares or sets a time."""
    return DatabaseClock() if now is None else now


def _ttl(ttl: float) -> float:
    if not ttl > 0:
        raise ValueError(f"a lease needs a positive ttl, not {ttl!r}")
    return ttl
