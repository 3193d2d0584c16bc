"""The origin: live playlists with blocking reload and delta updates, parts held until
they exist, and everything else from the store.

Live state comes from a `LiveSource`: the in-process `Hub` when the packager runs in the
same process (`HubLive`, the normal case), or `StoreLive`, which re-reads `state.json` from
the store for an origin running on its own. Paths, directives, the containment rule and cache
lifetimes are the shared ones of `hls`; the statuses follow LLHLS.md. Beside LL-HLS, it
answers each room's status object (`packager.status`, composed from the rooms of this process)
and the directory of public rooms (`packager.roomlist`, read from the registry).

A request held for a part is let go the moment its epoch stops (`LiveRoom.stop`): an ended
broadcast answers with its last playlist, a newer epoch on air here is waited on instead, and
otherwise the room carries on elsewhere (`ELSEWHERE` behind the origin tier, else 503).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hls.directives import BadDirective, parse_query
from hls.http import (
    CORS_HEADERS,
    DIRECTORY_CACHE,
    FINAL,
    IMMUTABLE,
    JSON_TYPE,
    NO_STORE,
    PLAYLIST_TYPE,
    PREFLIGHT_HEADERS,
    REFUSED,
    SHORT,
    STATUS_CACHE,
    asked_again,
    content_type_for_key,
    live_playlist_cache,
    max_age,
    stored_playlist_cache,
)
from hls.names import (
    LIVE_ROOT,
    PUBLIC_KINDS,
    STATE,
    ObjectName,
    parse_object,
    part_name,
    room_key,
)
from hls.reach import part_object_too_far, part_too_far
from hls.tokens import PRIVATE_ROOT
from packager.audience import AudienceBoard
from packager.errors import StoreError
from packager.live import Hub, LiveRoom
from packager.privacy import NoPrivateRooms, PrivacyUnknown, RoomPrivacy, served_here
from packager.recording import RecordingComposer
from packager.roomlist import RoomList, RoomListUnavailable
from packager.status import StatusDesk, StatusUnavailable
from packager.store import Store
from serving.threads import ThreadCpuCollector

log = logging.getLogger(__name__)

REQUESTS = Counter("townsquare_origin_requests_total", "Origin requests", ["kind", "status"])
WAITING = Gauge("townsquare_origin_blocking_waiters",
                "Requests held for a part, a segment or a starting room's master")
# Every process that serves an origin (ingest, `up`, the origin tier) says where its CPU goes.
REGISTRY.register(ThreadCpuCollector())

CORS = dict(CORS_HEADERS)
TEXT = "text/plain; charset=utf-8"
# How long a blocking request waits for a room that has no epoch on air here (it may be
# resuming after a restart) before the stored playlist answers.
RESUME_WAIT_SECONDS = 3.0
# A held request whose epoch stopped here without ending, from an origin behind the origin
# tier (a cluster node): the room carries on at another node, and the tier asks the room's
# owner again (`packager.tier`). Misdirected Request: this origin cannot answer for it.
ELSEWHERE = 421


class LiveSource(Protocol):
    """Where the origin finds a room's live broadcast."""

    async def live(self, room: str) -> LiveRoom | None: ...


class HubLive:
    """Live state straight from a packager in this process."""

    def __init__(self, hub: Hub):
        self.hub = hub

    async def live(self, room: str) -> LiveRoom | None:
        return self.hub.get(room)


class StoreLive:
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
        state = await self.store.get(room_key(room, STATE))
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
                if fresh is None or (fresh.epoch == current.epoch
                                     and fresh.version == current.version):
                    continue
                if fresh.epoch != current.epoch:
                    self._rooms[room] = fresh
                    current.stop()  # it grows no more here: its held readers move on
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


def public_object(path: str) -> tuple[ObjectName, str] | None:
    """The object a path below `/live/` names and its store key, when it is one listeners
    may ask for (the origin's and the tier's rule)."""
    obj = parse_object(path)
    if obj is None or obj.kind not in PUBLIC_KINDS:
        return None
    return obj, f"{LIVE_ROOT}/{path}"


Responder = Callable[[bytes, int, str, str, str, str], Response]


def answer(body: bytes, status: int, cache: str, ctype: str, method: str) -> Response:
    """An LL-HLS answer: CORS, Cache-Control, and HEAD without the body."""
    r = Response(b"" if method == "HEAD" else body, status,
                 headers={**CORS, "Cache-Control": cache}, media_type=ctype)
    if method == "HEAD":
        r.headers["Content-Length"] = str(len(body))
    return r


async def stored_answer(store: Store, key: str, kind: str, cache: str, method: str,
                        respond: Responder) -> Response:
    """An object from the store, as the origin and the tier serve it: 503 when the store
    fails, 404 when it lacks the object; a playlist is long-lived only once it has ended."""
    try:
        data = await store.get(key)
    except StoreError as exc:
        log.warning("store read %s failed: %s", key, exc)
        return respond(b"storage unavailable\n", 503, kind, NO_STORE, TEXT, method)
    if data is None:
        return respond(b"not found\n", 404, kind, REFUSED, TEXT, method)
    if kind in ("recording", "playlist", "blocking_playlist"):
        cache = stored_playlist_cache(data, cache)
    return respond(data, 200, kind, cache, content_type_for_key(key), method)


async def status_answer(desk: StatusDesk, room: str, method: str,
                        respond: Responder) -> Response:
    """A room's status object, as the origin and the tier serve it: 404 for a room nobody
    knows, 503 when the registry would have to say and cannot."""
    try:
        body = await desk.status(room)
    except StatusUnavailable as exc:
        return respond((str(exc) + "\n").encode(), 503, "status", SHORT, TEXT, method)
    if body is None:
        return respond(b"no such room\n", 404, "status", REFUSED, TEXT, method)
    return respond(body, 200, "status", STATUS_CACHE, JSON_TYPE, method)


async def directory_answer(rooms: RoomList, route: str, method: str,
                           respond: Responder) -> Response:
    """The directory of public rooms; only ever under `/live/` (it lists no private room)."""
    if not route.startswith(f"/{LIVE_ROOT}/"):
        return respond(b"not found\n", 404, "directory", REFUSED, TEXT, method)
    try:
        body = await rooms.document()
    except RoomListUnavailable as exc:
        return respond((str(exc) + "\n").encode(), 503, "directory", SHORT, TEXT, method)
    return respond(body, 200, "directory", DIRECTORY_CACHE, JSON_TYPE, method)


async def _held_until(live: LiveRoom, ready: Callable[[], bool], names: tuple[str, ...],
                      timeout: float) -> bool:
    """Hold a request until `ready()`, looking again at each change of the renditions in
    `names`: False once `timeout` has passed or the epoch has stopped first (it never will
    be). Counted in WAITING while held."""
    deadline = time.monotonic() + timeout
    WAITING.inc()
    try:
        while not ready():
            if live.stopped:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # `asyncio.wait` on the shared futures: no task per held request, and a future
            # is never cancelled for the other readers when this one times out.
            done, _ = await asyncio.wait({live.changed(name) for name in names},
                                         timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                return False
        return True
    finally:
        WAITING.dec()


def _resp(body: bytes, status: int, kind: str, cache: str, ctype: str, method: str) -> Response:
    REQUESTS.labels(kind, str(status)).inc()
    return answer(body, status, cache, ctype, method)


def _error(status: int, kind: str, message: str, cache: str, method: str) -> Response:
    return _resp((message + "\n").encode(), status, kind, cache, TEXT, method)


class Origin:
    def __init__(self, store: Store, rooms: LiveSource, privacy: RoomPrivacy | None = None,
                 audience: AudienceBoard | None = None, status: StatusDesk | None = None,
                 room_list: RoomList | None = None, routed: bool = False):
        self.store = store
        self.rooms = rooms
        # Reached through the origin tier (a cluster node): a request held for an epoch that
        # stops here gets ELSEWHERE, which the tier takes to the room's next owner. Without
        # the tier, a 503 that players and edges retry.
        self.routed = routed
        self.privacy: RoomPrivacy = privacy or NoPrivateRooms()
        self.recordings = RecordingComposer(store)
        # What the edges below report listening to each room (`total(room, time.time())`).
        self.audience = audience if audience is not None else AudienceBoard()
        # Rooms' status objects (facts from the rooms of this process, once attached) and
        # the directory of public rooms (empty without a registry).
        self.status = status if status is not None else StatusDesk(audience=self.audience)
        self.room_list = room_list if room_list is not None else RoomList(None)

    async def _wait(self, live: LiveRoom, name: str, msn: int, part: int | None,
                    timeout: float) -> bool:
        """Hold until `live` has the part: False once `timeout` has passed or the epoch has
        stopped without it (it never will)."""
        lr = live.renditions[name]
        return await _held_until(live, lambda: lr.playlist.has_part(msn, part), (name,), timeout)

    async def _announcement(self, room: str, live: LiveRoom) -> LiveRoom | None:
        """Hold a request for the master of a room that has just gone on air until it is
        announced (`packager.pipeline.ANNOUNCE_SEGMENTS`), for as long as a blocking request
        may be held, and return the room's epoch then. Listeners who wait for a room to start
        ask for it the moment it does: told 404, most players give up (hls.js, VLC,
        GStreamer), and an edge would keep that answer for its max-age."""
        td = max(lr.playlist.target_duration for lr in live.renditions.values())
        # Any rendition's change: the one that completes the count may be any.
        await _held_until(live, lambda: live.announced, tuple(live.renditions), 3 * td)
        return await self.rooms.live(room)

    async def _epoch(self, room: str, rendition: str, epoch: str | None) -> LiveRoom | None:
        """The room's live epoch when it has `rendition` (and is `epoch`, when given)."""
        live = await self.rooms.live(room)
        if live is None or rendition not in live.renditions:
            return None
        if epoch is not None and live.epoch != epoch:
            return None
        return live

    async def handle(self, request: Request) -> Response:
        method = request.method
        path = request.path_params["path"]
        found = public_object(path)
        if found is None:
            return _error(404, "other", "not found", REFUSED, method)
        obj, key = found
        if obj.kind == "directory":
            return await directory_answer(self.room_list, request.url.path, method, _resp)
        try:
            if not await served_here(self.privacy, obj.room, request.url.path):
                return _error(404, obj.kind, "not found", REFUSED, method)
        except PrivacyUnknown as exc:
            return _error(503, obj.kind, str(exc), SHORT, method)
        if obj.kind == "status":
            return await status_answer(self.status, obj.room, method, _resp)
        if obj.kind == "master":
            live = await self.rooms.live(obj.room)
            if live is not None and not live.announced and live.local:
                live = await self._announcement(obj.room, live)
            if live is not None and live.announced:
                return _resp(live.master, 200, "master", SHORT, PLAYLIST_TYPE, method)
            return await self._object(key, "master", SHORT, method)
        if obj.kind == "recording":
            return await self._recording(obj.room, obj.broadcast, obj.rendition, key, method)
        rend = obj.rendition
        assert rend is not None
        if obj.kind == "playlist":
            return await self._playlist(request, obj.room, rend, key, method)
        if obj.kind == "part":
            assert obj.msn is not None and obj.part is not None and obj.epoch is not None
            return await self._part(obj.room, rend, obj.epoch, obj.msn, obj.part, key, method)
        live = await self._epoch(obj.room, rend, obj.epoch)
        if live is not None:
            lr = live.renditions[rend]
            data = lr.init if obj.kind == "init" else lr.recent.get(path.rsplit("/", 1)[1])
            if data is not None:
                return _resp(data, 200, obj.kind, IMMUTABLE, content_type_for_key(key), method)
        return await self._object(key, obj.kind, IMMUTABLE, method)

    async def _object(self, key: str, kind: str, cache: str, method: str) -> Response:
        return await stored_answer(self.store, key, kind, cache, method, _resp)

    async def _recording(self, room: str, broadcast: str | None, rendition: str | None,
                         key: str, method: str) -> Response:
        # A recording still growing is re-read every couple of seconds; FINAL once ended.
        if rendition is None or broadcast is None:
            return await self._object(key, "recording", max_age(2), method)
        try:
            stored = await self.store.get(key)
            text = stored if stored is not None else await self.recordings.compose(
                room, broadcast, rendition)
        except StoreError as exc:
            log.warning("recording %s unavailable: %s", key, exc)
            return _error(503, "recording", "storage unavailable", NO_STORE, method)
        if text is None:
            return _error(404, "recording", "not found", REFUSED, method)
        cache = FINAL if b"#EXT-X-ENDLIST" in text else max_age(2)
        return _resp(text, 200, "recording", cache, PLAYLIST_TYPE, method)

    async def _playlist(self, request: Request, room: str, name: str, key: str,
                        method: str) -> Response:
        self.audience.report_headers(room, request.headers)  # an edge's report, if it sent one
        try:
            d = parse_query(request.url.query)
        except BadDirective as exc:
            return _error(400, "playlist", str(exc), REFUSED, method)
        kind = "blocking_playlist" if d.blocking else "playlist"
        live = await self._epoch(room, name, None)
        if live is None and d.msn is not None:
            # The room may be resuming (a restart): give it the time a part may take.
            live = await self._await_epoch(room, name, RESUME_WAIT_SECONDS)
        if live is None:
            # No epoch on air here: the last playlist the store has (a standalone origin, an
            # ended room). Without ENDLIST it is a live copy that a newer one may replace at
            # any moment: it lives no longer than a satisfied blocking answer.
            fallback = max_age(0) if d.blocking else SHORT
            return await self._object(key, kind, fallback, method)
        pl = live.renditions[name].playlist
        td = pl.target_duration
        satisfied = True
        if d.msn is not None and not pl.ended:
            if pl.position().too_far(d.msn):
                return _error(400, kind, "_HLS_msn is too far in the future", max_age(td), method)
            if d.part is not None and part_too_far(d.part, td, pl.part_target):
                return _error(400, kind, "_HLS_part is too far in the future", max_age(td),
                              method)
            satisfied = pl.has_part(d.msn, d.part)
            if not satisfied:
                held = await self._hold(live, room, name, d.msn, d.part, 3 * td)
                if held is None:
                    return _error(503, kind, "the requested part did not appear in time", SHORT,
                                  method)
                hpl = held.renditions[name].playlist
                if not hpl.ended and not hpl.has_part(d.msn, d.part):
                    return self._elsewhere(kind, method)
                live = held
            live = await self._epoch(room, name, None) or live
        pl = live.renditions[name].playlist
        if pl.ended:
            cache = FINAL
        else:
            # A URL asked again must not outlive the live edge, or a browser replays this
            # copy instead of asking (`hls.http.asked_again`).
            again = asked_again(satisfied, bool(pl.partial))
            cache = live_playlist_cache(td, d.blocking, pl.part_target, again)
        skip = d.skip is not None and not pl.ended
        return _resp(live.render(name, skip), 200, kind, cache, PLAYLIST_TYPE, method)

    async def _hold(self, live: LiveRoom, room: str, name: str, msn: int, part: int | None,
                    timeout: float) -> LiveRoom | None:
        """Hold a blocking request until the room's epoch on air here has the part, and
        return that epoch. An epoch that stops without it is returned at once when no other
        is on air here (it ended, or the room carries on elsewhere); a newer one on air here
        is waited on instead. None when the time runs out."""
        deadline = time.monotonic() + timeout
        while not await self._wait(live, name, msn, part, deadline - time.monotonic()):
            if not live.stopped:
                return None
            current = await self._epoch(room, name, None)
            if current is None or current is live or current.stopped:
                return live
            live = current
        return live

    def _elsewhere(self, kind: str, method: str) -> Response:
        """The answer to a request held for an epoch that stopped here without ending."""
        if self.routed:
            return _error(ELSEWHERE, kind, "the room is no longer on air here: ask its owner",
                          NO_STORE, method)
        return _error(503, kind, "the room stopped here and carries on under a new epoch: "
                      "ask again", SHORT, method)

    async def _await_epoch(self, room: str, name: str, timeout: float) -> LiveRoom | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            live = await self._epoch(room, name, None)
            if live is not None:
                return live
        return None

    async def _part(self, room: str, name: str, epoch: str, msn: int, part: int, key: str,
                    method: str) -> Response:
        live = await self._epoch(room, name, epoch)
        if live is not None:
            lr = live.renditions[name]
            pl = lr.playlist
            if part_object_too_far(part, pl.target_duration, pl.part_target):
                # No playlist can hint it: refused at once, without a wait or a store read.
                return _error(404, "part", "no segment holds that many parts", REFUSED, method)
            # A hinted part: hold the request until the part exists, then send it whole.
            next_msn, next_part = pl.next_msn, len(pl.partial)
            ahead = (next_msn, next_part) <= (msn, part) <= (next_msn + 1, next_part + 1)
            if ahead and not pl.ended and \
                    not await self._wait(live, name, msn, part, 3 * pl.target_duration):
                why = ("its epoch stopped before it" if live.stopped
                       else "part did not appear in time")
                return _error(503, "part", why, SHORT, method)
            data = lr.recent.get(part_name(msn, part))
            if data is not None:
                return _resp(data, 200, "part", IMMUTABLE, content_type_for_key(key), method)
            pl = lr.playlist
            listed = next((s for s in pl.segments if s.msn == msn), None)
            if listed is not None and listed.parts and part >= len(listed.parts):
                # Its segment is complete with fewer parts: this one will never exist.
                return _error(404, "part", "no such part", REFUSED, method)
            # Listed in the playlist but not yet in a store written from another process.
            if pl.has_part(msn, part) and msn >= pl.media_sequence:
                for _ in range(20):
                    resp = await self._object(key, "part", IMMUTABLE, method)
                    if resp.status_code != 404:
                        return resp
                    await asyncio.sleep(0.05)
        return await self._object(key, "part", IMMUTABLE, method)


def build_app(store: Store, rooms: LiveSource, privacy: RoomPrivacy | None = None,
              audience: AudienceBoard | None = None, status: StatusDesk | None = None,
              room_list: RoomList | None = None, routed: bool = False) -> Starlette:
    """`privacy`: which rooms are private (`packager.privacy.RegistryPrivacy`); without it every
    room is public. `audience`: the board the edges' reports go to (a new one without it).
    `status`: where rooms' status objects come from (without it: nowhere, every room is
    unknown); `room_list`: the directory of public rooms (without it: empty). `routed`: the
    origin of a cluster node, reached through the origin tier (see `ELSEWHERE`)."""
    origin = Origin(store, rooms, privacy, audience, status, room_list, routed)
    return Starlette(routes=live_routes(origin.handle))


def live_routes(handle: Callable[[Request], Awaitable[Response]]) -> list[Route]:
    """What every origin-like service answers: `/live/...` and `/private/...` (private rooms,
    the token already checked and stripped by the edge) by `handle`, CORS preflights,
    `/healthz` and `/metrics`."""

    async def healthz(request: Request) -> Response:
        return Response(b"ok\n", media_type="text/plain")

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def options(request: Request) -> Response:
        return Response(b"", 204, headers={**CORS, **dict(PREFLIGHT_HEADERS)})

    return [
        Route("/live/{path:path}", handle, methods=["GET", "HEAD"]),
        Route("/live/{path:path}", options, methods=["OPTIONS"]),
        Route(f"/{PRIVATE_ROOT}/{{path:path}}", handle, methods=["GET", "HEAD"]),
        Route(f"/{PRIVATE_ROOT}/{{path:path}}", options, methods=["OPTIONS"]),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
    ]
