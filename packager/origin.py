"""The origin: live playlists with blocking reload and delta updates, parts held until
they exist, and everything else from the store.

Live state comes from a `RoomSource`: the in-process `Hub` when the packager runs in the
same process (the normal case), or `StoreRooms`, which re-reads `state.json` from the store
for an origin running on its own. Directive handling follows draft-pantos-hls-rfc8216bis
§6.2.5 and the statuses in LLHLS.md; cache lifetimes follow its Appendix B.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from packager.errors import StoreError
from packager.live import Hub, LiveRoom
from packager.store import Store, content_type_for
from townsquare.rooms import is_valid_room

log = logging.getLogger(__name__)

REQUESTS = Counter("townsquare_origin_requests_total", "Origin requests", ["kind", "status"])
WAITING = Gauge("townsquare_origin_blocking_waiters", "Requests held for a part or segment")

_LIVE_PLAYLIST = re.compile(r"^(?P<room>[^/]+)/(?P<bid>[^/]+)/(?P<rend>[A-Za-z0-9-]+)/live\.m3u8$")
_PART = re.compile(r"^(?P<room>[^/]+)/(?P<bid>[^/]+)/(?P<rend>[A-Za-z0-9-]+)/p(?P<msn>\d+)\.(?P<part>\d+)\.m4s$")
_MEDIA = re.compile(r"^(?P<room>[^/]+)/(?P<bid>[^/]+)/(?P<rend>[A-Za-z0-9-]+)/(?P<name>init\.mp4|s\d+\.m4s)$")
_INT = re.compile(r"^\d{1,10}$")

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Age, Content-Length, Date",
}
IMMUTABLE = "public, max-age=86400, immutable"


class RoomSource(Protocol):
    async def live(self, room: str) -> LiveRoom | None: ...


class HubRooms:
    """Live state straight from a packager in this process."""

    def __init__(self, hub: Hub):
        self.hub = hub

    async def live(self, room: str) -> LiveRoom | None:
        return self.hub.get(room)


class StoreRooms:
    """Live state for an origin without a packager: rooms are loaded from `state.json`
    and refreshed every `poll` seconds while someone asks for them."""

    IDLE_AFTER = 30.0

    def __init__(self, store: Store, poll: float):
        self.store = store
        self.poll = poll
        self._rooms: dict[str, LiveRoom] = {}
        self._seen: dict[str, float] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def _load(self, room: str) -> LiveRoom | None:
        raw = await self.store.get(f"live/{room}/room.json")
        if raw is None:
            return None
        bid = json.loads(raw)["broadcast_id"]
        state = await self.store.get(f"live/{room}/{bid}/state.json")
        return LiveRoom.from_state(json.loads(state)) if state else None

    async def live(self, room: str) -> LiveRoom | None:
        self._seen[room] = time.monotonic()
        if room not in self._rooms:
            try:
                loaded = await self._load(room)
            except (StoreError, ValueError, KeyError) as exc:
                log.warning("room %s: cannot load live state: %s", room, exc)
                return None
            if loaded is None:
                return None
            self._rooms[room] = loaded
            self._tasks[room] = asyncio.get_running_loop().create_task(self._follow(room))
        return self._rooms.get(room)

    async def _follow(self, room: str) -> None:
        try:
            while time.monotonic() - self._seen.get(room, 0) < self.IDLE_AFTER:
                await asyncio.sleep(self.poll)
                try:
                    fresh = await self._load(room)
                except (StoreError, ValueError, KeyError) as exc:
                    log.warning("room %s: state refresh failed: %s", room, exc)
                    continue
                current = self._rooms[room]
                if fresh is None or (fresh.broadcast_id == current.broadcast_id
                                     and fresh.version == current.version):
                    continue
                if fresh.broadcast_id != current.broadcast_id:
                    self._rooms[room] = fresh
                    current.touch()
                    continue
                changed = set()
                for name, lr in fresh.renditions.items():
                    if current.renditions[name].playlist != lr.playlist:
                        current.renditions[name].playlist = lr.playlist
                        changed.add(name)
                current.version = fresh.version - 1
                current.touch(changed)
        finally:
            self._rooms.pop(room, None)
            self._tasks.pop(room, None)


@dataclass(frozen=True, slots=True)
class Directives:
    msn: int | None
    part: int | None
    skip: bool


class BadDirective(ValueError):
    pass


def parse_directives(query: dict[str, str]) -> Directives:
    """Read `_HLS_msn`, `_HLS_part`, `_HLS_skip`; anything malformed is a 400."""
    def num(name: str) -> int | None:
        v = query.get(name)
        if v is None:
            return None
        if not _INT.match(v):
            raise BadDirective(f"{name} must be a non-negative integer")
        return int(v)

    msn, part = num("_HLS_msn"), num("_HLS_part")
    if part is not None and msn is None:
        raise BadDirective("_HLS_part needs _HLS_msn")
    skip_raw = query.get("_HLS_skip")
    if skip_raw not in (None, "YES", "v2"):
        raise BadDirective("_HLS_skip must be YES or v2")
    return Directives(msn, part, skip_raw is not None)


def _resp(body: bytes, status: int, kind: str, cache: str, ctype: str, method: str) -> Response:
    REQUESTS.labels(kind, str(status)).inc()
    headers = {**CORS, "Cache-Control": cache}
    r = Response(b"" if method == "HEAD" else body, status, headers=headers, media_type=ctype)
    if method == "HEAD":
        r.headers["Content-Length"] = str(len(body))
    return r


def _error(status: int, kind: str, message: str, cache: str, method: str) -> Response:
    return _resp((message + "\n").encode(), status, kind, cache, "text/plain; charset=utf-8", method)


class Origin:
    def __init__(self, store: Store, rooms: RoomSource):
        self.store = store
        self.rooms = rooms

    async def _wait(self, live: LiveRoom, name: str, msn: int, part: int | None,
                    timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        WAITING.inc()
        try:
            while not live.renditions[name].playlist.has_part(msn, part):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                try:
                    await asyncio.wait_for(live.changed(name), remaining)
                except TimeoutError:
                    return False
            return True
        finally:
            WAITING.dec()

    async def handle(self, request: Request) -> Response:
        method = request.method
        path = request.path_params["path"]
        room = path.split("/", 1)[0]
        if not is_valid_room(room) or ".." in path.split("/"):
            return _error(404, "other", "no such room", "public, max-age=2", method)
        if path == f"{room}/master.m3u8":
            return await self._object(f"live/{path}", "master", "public, max-age=1", method)
        m = _LIVE_PLAYLIST.match(path)
        if m:
            return await self._playlist(request, m["room"], m["bid"], m["rend"], method)
        m = _PART.match(path)
        if m:
            return await self._part(m["room"], m["bid"], m["rend"], int(m["msn"]), int(m["part"]),
                                    path, method)
        m = _MEDIA.match(path)
        if m:
            kind = "init" if m["name"] == "init.mp4" else "segment"
            live = await self.rooms.live(room)
            if live is not None and live.broadcast_id == m["bid"] and m["rend"] in live.renditions:
                lr = live.renditions[m["rend"]]
                data = lr.init if kind == "init" else lr.recent.get(m["name"])
                if data is not None:
                    return _resp(data, 200, kind, IMMUTABLE, "audio/mp4", method)
            return await self._object(f"live/{path}", kind, IMMUTABLE, method)
        if path.endswith("recording.m3u8"):
            return await self._object(f"live/{path}", "recording", "public, max-age=2", method)
        return _error(404, "other", "not found", "public, max-age=2", method)

    async def _object(self, key: str, kind: str, cache: str, method: str) -> Response:
        try:
            data = await self.store.get(key)
        except StoreError as exc:
            log.warning("store read %s failed: %s", key, exc)
            return _error(503, kind, "storage unavailable", "no-store", method)
        if data is None:
            return _error(404, kind, "not found", "public, max-age=2", method)
        if kind == "recording" and b"#EXT-X-ENDLIST" in data:
            cache = "public, max-age=86400"
        return _resp(data, 200, kind, cache, content_type_for(key), method)

    async def _playlist(self, request: Request, room: str, bid: str, name: str,
                        method: str) -> Response:
        try:
            d = parse_directives(dict(request.query_params))
        except BadDirective as exc:
            return _error(400, "playlist", str(exc), "public, max-age=2", method)
        blocking = d.msn is not None
        kind = "blocking_playlist" if blocking else "playlist"
        live = await self.rooms.live(room)
        if live is None or live.broadcast_id != bid or name not in live.renditions:
            # An older broadcast: its final playlist is in the store.
            return await self._object(f"live/{room}/{bid}/{name}/live.m3u8", kind,
                                      "public, max-age=86400", method)
        pl = live.renditions[name].playlist
        td = pl.target_duration
        ok_cache = f"public, max-age={6 * td if blocking else max(1, td // 2)}"
        if blocking and not pl.ended and d.msn is not None:
            last_msn, _ = pl.last_position()
            if d.msn > max(last_msn, pl.next_msn) + 2:
                return _error(400, kind, "_HLS_msn is too far in the future",
                              f"public, max-age={td}", method)
            # A segment holds about TD / part target parts; twice that is no real request.
            if d.part is not None and d.part > 2 * math.ceil(td / pl.part_target):
                return _error(400, kind, "_HLS_part is too far in the future",
                              f"public, max-age={td}", method)
            if not await self._wait(live, name, d.msn, d.part, 3 * td):
                return _error(503, kind, "the requested part did not appear in time",
                              "public, max-age=1", method)
            live = await self.rooms.live(room) or live
            if live.broadcast_id != bid:
                return await self._object(f"live/{room}/{bid}/{name}/live.m3u8", kind,
                                          "public, max-age=86400", method)
        pl = live.renditions[name].playlist
        cache = "public, max-age=86400" if pl.ended else ok_cache
        return _resp(live.render(name, d.skip and not pl.ended), 200, kind, cache,
                     "application/vnd.apple.mpegurl", method)

    async def _part(self, room: str, bid: str, name: str, msn: int, part: int, path: str,
                    method: str) -> Response:
        live = await self.rooms.live(room)
        uri = f"p{msn}.{part}.m4s"
        if live is not None and live.broadcast_id == bid and name in live.renditions:
            lr = live.renditions[name]
            pl = lr.playlist
            # A hinted part: hold the request until the part exists, then send it whole.
            next_msn, next_part = pl.next_msn, len(pl.partial)
            ahead = (msn, part) >= (next_msn, next_part) and (msn, part) <= (next_msn + 1, next_part + 1)
            if ahead and not pl.ended:
                if not await self._wait(live, name, msn, part, 3 * pl.target_duration):
                    return _error(503, "part", "part did not appear in time", "public, max-age=1", method)
            data = lr.recent.get(uri)
            if data is not None:
                return _resp(data, 200, "part", IMMUTABLE, "audio/mp4", method)
            # Listed in the playlist but not yet in a store written from another process.
            if pl.has_part(msn, part) and msn >= pl.media_sequence:
                for _ in range(20):
                    resp = await self._object(f"live/{path}", "part", IMMUTABLE, method)
                    if resp.status_code != 404:
                        return resp
                    await asyncio.sleep(0.05)
        return await self._object(f"live/{path}", "part", IMMUTABLE, method)


def build_app(store: Store, rooms: RoomSource) -> Starlette:
    origin = Origin(store, rooms)

    async def live(request: Request) -> Response:
        return await origin.handle(request)

    async def healthz(request: Request) -> Response:
        return Response(b"ok\n", media_type="text/plain")

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def options(request: Request) -> Response:
        return Response(b"", 204, headers={**CORS, "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
                                           "Access-Control-Max-Age": "86400"})

    routes = [
        Route("/live/{path:path}", live, methods=["GET", "HEAD"]),
        Route("/live/{path:path}", options, methods=["OPTIONS"]),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
    ]
    return Starlette(routes=routes)
