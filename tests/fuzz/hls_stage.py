"""A real origin (uvicorn on a real port, a folder store, a room on air in its hub) and a real
edge in front of it, on the fuzz loop thread, for the request targets to throw bytes at.

The room `seeds.ROOM` is on air with the packager's golden playlist: rendition aac96 live
(blocking requests are released, held or refused by the real rules), aac48 ended. Its objects
are also in the store, as a packager would have left them.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, replace
from pathlib import Path

import uvicorn

from edge.server import run as run_edge
from edge.settings import EdgeSettings
from hls.names import INIT, LIVE_PLAYLIST, MASTER, room_key
from packager.ladder import Rendition
from packager.live import Hub, LiveRoom
from packager.origin import HubLive, build_app
from packager.playlist import parse_media
from packager.store import LocalStore
from tests.fuzz import seeds
from tests.support.procs import free_port

INIT_BYTES = (seeds.PACKAGER_GOLDEN / "init_aac.mp4").read_bytes()
PART_BYTES = (seeds.PACKAGER_GOLDEN / "fragment.m4s").read_bytes()


@dataclass
class HlsStage:
    origin_port: int
    edge_port: int
    store: LocalStore
    live: LiveRoom
    _origin: uvicorn.Server
    _origin_task: asyncio.Task[None]
    _edge_task: asyncio.Task[None]

    async def stop(self) -> None:
        self._edge_task.cancel()  # the edge serves until cancelled
        self._origin.should_exit = True
        for task in (self._edge_task, self._origin_task):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
        self.store.close()


async def _fill(store: LocalStore, live: LiveRoom, master: bytes) -> None:
    room = seeds.ROOM
    await store.put(room_key(room, MASTER), master, "no-cache")
    for name, lr in live.renditions.items():
        await store.put(room_key(room, name, LIVE_PLAYLIST), live.render(name, False), "no-cache")
        await store.put(room_key(room, name, seeds.EPOCH, INIT), INIT_BYTES, "immutable")
        for seg in lr.playlist.segments:
            await store.put(room_key(room, name, seeds.EPOCH, seg.uri), PART_BYTES, "immutable")
            for part in seg.parts:
                await store.put(room_key(room, name, seeds.EPOCH, part.uri), PART_BYTES,
                                "immutable")


async def start(folder: Path) -> HlsStage:
    playlist = parse_media(seeds.playlists()[0].decode())
    renditions = [Rendition(seeds.RENDITIONS[0], "aac", 96),
                  Rendition(seeds.RENDITIONS[1], "aac", 48)]
    master = seeds.playlists()[2]
    live = LiveRoom(seeds.ROOM, seeds.EPOCH, renditions,
                    {seeds.RENDITIONS[0]: playlist,
                     seeds.RENDITIONS[1]: replace(playlist, ended=True)}, master)
    live.announced = True
    for lr in live.renditions.values():
        lr.init = INIT_BYTES
        for seg in lr.playlist.segments[-3:]:
            for part in seg.parts:
                lr.remember(part.uri, PART_BYTES)
    hub = Hub()
    hub.put(live)
    store = LocalStore(folder)
    await _fill(store, live, master)

    origin_port = free_port()
    origin = uvicorn.Server(uvicorn.Config(build_app(store, HubLive(hub)), host="127.0.0.1",
                                           port=origin_port, log_config=None,
                                           lifespan="off"))
    loop = asyncio.get_running_loop()
    origin_task = loop.create_task(origin.serve())
    while not origin.started:
        await asyncio.sleep(0.02)
    edge_port = free_port()
    started = asyncio.Event()
    settings = EdgeSettings(host="127.0.0.1", edge_port=edge_port,
                            edge_upstream=f"http://127.0.0.1:{origin_port}")
    edge_task = loop.create_task(run_edge(settings, started))
    await asyncio.wait_for(started.wait(), 10)
    return HlsStage(origin_port, edge_port, store, live, origin, origin_task, edge_task)
