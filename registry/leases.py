"""Room leases: which node owns a room, until when, and under which epoch.

A lease is two columns of the room's row, `owner` and `lease_expires`, changed only by
conditional UPDATEs, so the database decides between nodes racing for a room: a row lock
(PostgreSQL) or the write lock (SQLite) serializes them, and the loser's WHERE no longer matches.
Taking a room bumps its epoch in the same UPDATE; the owner's later writes carry that epoch
(`Registry.advance`), so a node that lost its lease during a partition is fenced off even when
its writes arrive late. Expiries are set by and compared with the database's clock
(`registry.clock`, read by the statement that sets or compares one), so the nodes' own clocks
need not agree; a node times its own margin of safety on its monotonic clock (`ingest.node`).

These functions run inside a transaction that `Registry` opened, and raise driver errors.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from registry.clock import Time
from registry.errors import NoSuchRoom
from registry.records import Lease, Owner
from registry.tables import epochs, nodes, rooms


def held(now: Time) -> sa.ColumnElement[bool]:
    """The room's lease is live at `now`: its owner may publish."""
    return sa.and_(rooms.c.owner.is_not(None), rooms.c.lease_expires >= now)


def lapsed(now: Time) -> sa.ColumnElement[bool]:
    """Nobody holds the room at `now`. Spelled out rather than NOT held(): NULLs stay false."""
    return sa.or_(
        rooms.c.owner.is_(None), rooms.c.lease_expires.is_(None), rooms.c.lease_expires < now
    )


def free(node: str, now: Time) -> sa.ColumnElement[bool]:
    """`node` may take the room at `now`: it holds it already, or nobody does."""
    return sa.or_(rooms.c.owner == node, lapsed(now))


def orphaned(now: Time) -> sa.ColumnElement[bool]:
    """A live room nobody holds: its owner crashed or lost the database."""
    return sa.and_(rooms.c.state == "live", lapsed(now))


async def take(
    conn: AsyncConnection, name: str, node: str, expires: Time, now: Time,
    go_live: str | None = None,
) -> Lease | None:
    values: dict[str, object] = {"owner": node, "lease_expires": expires,
                                 "epoch": rooms.c.epoch + 1}
    if go_live is not None:
        # A waiting room goes live with broadcast `go_live` in the same UPDATE that makes
        # `node` its owner: no other node can start another broadcast of it in between.
        waiting = rooms.c.state == "waiting"
        values.update(state=sa.case((waiting, "live"), else_=rooms.c.state),
                      broadcast_id=sa.case((waiting, go_live), else_=rooms.c.broadcast_id),
                      started_at=sa.case((waiting, now), else_=rooms.c.started_at))
    row = (
        await conn.execute(
            sa.update(rooms)
            .where(rooms.c.name == name, rooms.c.state != "ended", free(node, now))
            .values(**values)
            .returning(rooms.c.epoch, rooms.c.next_msn, rooms.c.broadcast_id, rooms.c.state,
                       rooms.c.lease_expires)
        )
    ).first()
    if row is None:
        if await conn.scalar(sa.select(rooms.c.name).where(rooms.c.name == name)) is None:
            raise NoSuchRoom(f"no room named {name!r}")
        return None
    lease = Lease(
        room=name, node=node, epoch=int(row.epoch), expires=float(row.lease_expires),
        next_msn=int(row.next_msn), broadcast_id=row.broadcast_id,
    )
    if row.state == "live" and lease.broadcast_id is not None:
        # A live room's new epoch continues its broadcast: record it as start_epoch would.
        await conn.execute(
            sa.insert(epochs).values(
                room=name, epoch=lease.epoch, broadcast_id=lease.broadcast_id,
                started_at=now, ended_at=None, first_msn=lease.next_msn, last_msn=None,
            )
        )
    return lease


async def renew(
    conn: AsyncConnection, node: str, names: list[str], expires: Time, now: Time
) -> dict[str, float]:
    renewed = await conn.execute(
        sa.update(rooms)
        .where(rooms.c.name.in_(names), rooms.c.owner == node, rooms.c.lease_expires >= now)
        .values(lease_expires=expires)
        .returning(rooms.c.name, rooms.c.lease_expires)
    )
    return {row.name: float(row.lease_expires) for row in renewed}


async def release(conn: AsyncConnection, name: str, node: str, epoch: int) -> bool:
    released = await conn.execute(
        sa.update(rooms)
        .where(rooms.c.name == name, rooms.c.owner == node, rooms.c.epoch == epoch)
        .values(owner=None, lease_expires=None)
    )
    return released.rowcount == 1


async def owner(conn: AsyncConnection, name: str, now: Time) -> Owner | None:
    row = (
        await conn.execute(
            sa.select(rooms.c.owner, rooms.c.epoch, rooms.c.lease_expires, nodes.c.internal_url)
            .select_from(rooms.outerjoin(nodes, nodes.c.id == rooms.c.owner))
            .where(rooms.c.name == name, held(now))
        )
    ).first()
    if row is None:
        return None
    return Owner(
        node=row.owner, epoch=int(row.epoch), expires=float(row.lease_expires),
        internal_url=row.internal_url,
    )
