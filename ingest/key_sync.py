"""Telling every node of a cluster that a room's stream key changed.

The node that rotates or revokes a key writes it to the registry first; the others still hold
the old key in memory and may hold speakers it admitted (their own, or ones they relay to the
room's owner). Each alive node in the directory is asked, on its control API, to read the key
again and disconnect those speakers (`POST /internal/keys/{room}`, admin token). A node that
cannot be reached is reported, not retried: it checks keys against the registry on every new
publish in cluster mode, so only speakers it already holds outlive the change there, and only
until it is reachable and asked again (repeat the rotation or revocation).
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from ingest.rooms import Rooms
from registry import RegistryError

log = logging.getLogger("townsquare.ingest.keys")

KEY_SYNC_PATH = "/internal/keys/"  # on every node's control API, followed by the room
SYNC_TIMEOUT_SECONDS = 5.0


async def tell_nodes(rooms: Rooms, room: str, admin_token: str) -> dict[str, str]:
    """Ask every other alive node to apply the room's current key; {node id: outcome}."""
    if rooms.node is None or rooms.registry is None:
        return {}
    try:
        nodes = [n for n in await rooms.registry.nodes() if n.id != rooms.node.id]
    except RegistryError as exc:
        log.warning("room %s: key changed, but the node directory cannot be read: %s", room, exc)
        return {"directory": f"unreachable: {exc}"}
    if not nodes:
        return {}
    async with httpx.AsyncClient(timeout=SYNC_TIMEOUT_SECONDS, trust_env=False) as client:

        async def tell(control_url: str) -> str:
            try:
                r = await client.post(f"{control_url.rstrip('/')}{KEY_SYNC_PATH}{room}",
                                      headers={"Authorization": f"Bearer {admin_token}"})
            except httpx.HTTPError as exc:
                return f"unreachable: {type(exc).__name__}"
            return "ok" if r.status_code == 200 else f"answered {r.status_code}"

        outcomes = await asyncio.gather(*(tell(n.control_url) for n in nodes))
    result = {n.id: outcome for n, outcome in zip(nodes, outcomes, strict=True)}
    for node, outcome in result.items():
        if outcome != "ok":
            log.warning("room %s: node %s was not told of the key change: %s", room, node,
                        outcome)
    return result
