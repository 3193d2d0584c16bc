"""The node directory: the ingest nodes sharing the database, each as it last reported itself.

A node registers once at start (an upsert, so a restarted node simply overwrites its row) and
then heartbeats its load; a node whose heartbeat is older than `alive_within` is left out of
`alive`, whatever its row says. Rows are never the truth about room ownership: leases are.

These functions run inside a transaction that `Registry` opened, and raise driver errors.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from registry.clock import Time
from registry.errors import NoSuchNode
from registry.records import NodeInfo
from registry.tables import nodes


async def upsert(conn: AsyncConnection, node: NodeInfo) -> None:
    values = dataclasses.asdict(node)
    changed = [key for key in values if key != "id"]
    if conn.dialect.name == "postgresql":
        pg = postgresql.insert(nodes).values(**values)
        await conn.execute(pg.on_conflict_do_update(
            index_elements=[nodes.c.id], set_={key: pg.excluded[key] for key in changed}
        ))
    else:
        lite = sqlite.insert(nodes).values(**values)
        await conn.execute(lite.on_conflict_do_update(
            index_elements=[nodes.c.id], set_={key: lite.excluded[key] for key in changed}
        ))


async def heartbeat(
    conn: AsyncConnection, node: str, rooms: int, cpu: float, draining: bool, now: Time
) -> None:
    beat = await conn.execute(
        sa.update(nodes)
        .where(nodes.c.id == node)
        .values(rooms=rooms, cpu=cpu, draining=draining, heartbeat_at=now)
    )
    if beat.rowcount != 1:
        raise NoSuchNode(f"no node {node!r} in the directory; register it first")


async def alive(conn: AsyncConnection, since: Time) -> list[NodeInfo]:
    """Nodes heard from at `since` or later: accepting ones first, then by load, cpu and id."""
    rows = await conn.execute(sa.select(nodes).where(nodes.c.heartbeat_at >= since))
    found = [_node_info(row) for row in rows]
    # Sorted here rather than in SQL: integer division and NULL ordering differ by backend,
    # and a directory holds a handful of rows.
    return sorted(found, key=lambda n: (n.draining, n.load, n.cpu, n.id))


async def forget(conn: AsyncConnection, node: str) -> None:
    await conn.execute(sa.delete(nodes).where(nodes.c.id == node))


def _node_info(row: sa.Row[Any]) -> NodeInfo:
    return NodeInfo(
        id=row.id,
        internal_url=row.internal_url,
        control_url=row.control_url,
        rtmp_port=int(row.rtmp_port),
        rooms=int(row.rooms),
        cpu=float(row.cpu),
        capacity=int(row.capacity),
        heartbeat_at=float(row.heartbeat_at),
        draining=bool(row.draining),
    )
