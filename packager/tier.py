"""The origin tier: stateless replicas that serve every room's LL-HLS from the room's owner and
the object store.

In a cluster each ingest node runs the packagers of the rooms it owns with an origin in the same
process (`HubLive`): it answers blocking playlist requests and hinted parts from memory the moment
a part is cut. The tier runs as many replicas as needed between those owners and the
edges/shields, and holds no room state:

- Live requests (media playlists with or without `_HLS_*` directives, the master, and parts,
  segments or init segments the store does not have yet) are forwarded to the room's owner,
  found with `Registry.owner_of` through `OwnerDirectory`, and its answer (status, body,
  Content-Type, Cache-Control, Age) is passed through unchanged.
- Everything immutable (init segments, segments, stored parts, recordings) is read from the
  store first, with the lifetimes of `hls.http`: owners only see what only they can answer.
- A room's status object (`status.json`) goes to its owner like the master; a room nobody owns
  (waiting, ended) is described from the database. The directory of public rooms
  (`rooms.json`) is read from the database, at most once a second (`packager.roomlist`).
- Paths outside the grammar of `hls.names` are refused before any store read, database lookup
  or forward; malformed directives get 400 the same way.
- A private room is served only under `/private/{room}/...` (the edge checked and stripped the
  listener token), a public one only under `/live/`; the other path answers 404. Privacy is
  read from the same database, cached like owners (`packager.privacy`), and forwards keep the
  prefix the request came with.

Why forward rather than follow `state.json` as a standalone origin does (`StoreLive`): following
means every replica polls a per-room object (20 reads/s a room at the default poll), every
part's release waits for a store write plus a poll (tens of ms on S3, each time), and the state
a replica rebuilds always lags the owner's. The owner releases a held request the moment its
part exists; forwarding costs one hop on a pooled connection, and the owner costs one database
read per room per `tier_owner_cache_seconds`, however many listeners.

A failover (the owner dies, another node takes the room under a new epoch) shows as a room
without an owner or an owner that does not answer (refused, reset, timed out, or 5xx other than
a held request's 503); a hand-over (the owner stops the room to leave the cluster) as an owner
that answers a held request with `ELSEWHERE` (421) the moment its epoch stops. The room is then
looked up again at once, at most every
`RETRY_SECONDS`: a blocking request keeps trying for `tier_failover_wait_seconds` from its
arrival, then gets 503 (max-age=1); a plain playlist or the master falls back to the copy in the
store, short-lived unless it has ENDLIST. When the rooms database cannot be reached, an owner
already known is still used until its lease runs out (no other node can take the room before);
after that live requests get 503 saying so, and immutable objects are still served from the
store.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import httpx
from prometheus_client import Counter, Gauge
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from hls.directives import BadDirective, parse_query
from hls.http import (
    CORS_HEADERS,
    FINAL,
    IMMUTABLE,
    NO_STORE,
    PLAYLIST_TYPE,
    REFUSED,
    SHORT,
    content_type_for_key,
    max_age,
)
from hls.names import ObjectName
from packager.audience import relay_report, relayed_report
from packager.errors import StoreError
from packager.origin import (
    ELSEWHERE,
    answer,
    directory_answer,
    live_routes,
    public_object,
    status_answer,
    stored_answer,
)
from packager.privacy import (
    NoPrivateRooms,
    PrivacyUnknown,
    RegistryPrivacy,
    RoomPrivacy,
    served_here,
)
from packager.recording import RecordingComposer
from packager.roomlist import RoomList
from packager.settings import TierSettings
from packager.status import StatusDesk
from packager.store import Store
from registry import Owner, RegistryError, RoomListing, RoomRecord

__all__ = [
    "DirectoryUnavailable",
    "OwnerDirectory",
    "OwnerLookup",
    "TierSettings",
    "build_tier_app",
]

log = logging.getLogger(__name__)

REQUESTS = Counter("townsquare_tier_requests_total", "Tier requests", ["kind", "status"])
FORWARDS = Counter("townsquare_tier_forwards_total", "Requests forwarded to a room's owner",
                   ["outcome"])
LOOKUPS = Counter("townsquare_tier_owner_lookups_total", "Owner lookups in the rooms database",
                  ["outcome"])
STORE_READS = Counter("townsquare_tier_store_reads_total", "Object store reads", ["outcome"])
CACHED_OWNERS = Gauge("townsquare_tier_owner_cache_rooms", "Rooms whose owner is cached")
FAILOVER_WAITERS = Gauge("townsquare_tier_failover_waiters",
                         "Blocking requests waiting for a room's new owner")

CORS = dict(CORS_HEADERS)
# While a room's owner is missing or silent it is looked up at most this often.
RETRY_SECONDS = 0.25
# An owner that does not accept a connection within this is as good as down.
CONNECT_SECONDS = 2.0
ENDLIST = b"#EXT-X-ENDLIST"


# --- owners -------------------------------------------------------------------------------
class OwnerLookup(Protocol):
    """Where rooms' owners (and whether they are private), rooms nobody publishes and the
    directory of public rooms are found: `registry.Registry`."""

    async def owner_of(self, name: str) -> Owner | None: ...

    async def private_rooms(self, names: list[str]) -> dict[str, bool]: ...

    async def get_room(self, name: str) -> RoomRecord | None: ...

    async def public_rooms(self, replays: int = ..., live: int = ...) -> RoomListing: ...


class DirectoryUnavailable(Exception):
    """The rooms database cannot be reached and no live lease of the room is known."""


@dataclass(slots=True)
class _Entry:
    url: str | None  # the owner's origin; None when nobody holds the room (or see `error`)
    lease_until: float  # wall clock: nobody else can own the room before this
    checked: float  # monotonic time of the lookup
    fresh_for: float  # seconds the answer is trusted
    error: str | None = None


class OwnerDirectory:
    """Rooms' owners from the registry, cached: one lookup per room per `ttl` at most, shared by
    every request that arrives meanwhile; every `retry` at most while the room's owner is
    missing or not answering (`failed`)."""

    def __init__(self, registry: OwnerLookup, ttl: float = 1.0, retry: float = RETRY_SECONDS,
                 max_rooms: int = 10_000) -> None:
        self.registry = registry
        self.ttl = ttl
        self.retry = min(retry, ttl)
        self.max_rooms = max_rooms
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._pending: dict[str, asyncio.Task[_Entry]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def owner_url(self, room: str, *, retrying: bool = False) -> str | None:
        """The base URL of the origin that owns `room`, None when nobody does. `retrying`: the
        caller is waiting for a new owner, so an answer older than `retry` is looked up again.
        Raises DirectoryUnavailable when the database cannot say."""
        entry = self._entries.get(room)
        if entry is not None:
            fresh_for = min(entry.fresh_for, self.retry) if retrying else entry.fresh_for
            if time.monotonic() - entry.checked < fresh_for:
                self._entries.move_to_end(room)
                return _url(entry)
        pending = self._pending.get(room)
        if pending is None:
            pending = asyncio.get_running_loop().create_task(self._lookup(room, entry))
            self._pending[room] = pending
        # Shielded: one caller giving up must not cancel the lookup the others wait on.
        return _url(await asyncio.shield(pending))

    def failed(self, room: str, url: str) -> None:
        """The owner at `url` did not answer for `room`: look the room up again soon."""
        entry = self._entries.get(room)
        if entry is not None and entry.url == url:
            entry.fresh_for = self.retry

    async def _lookup(self, room: str, previous: _Entry | None) -> _Entry:
        try:
            try:
                owner = await self.registry.owner_of(room)
            except RegistryError as exc:
                LOOKUPS.labels("error").inc()
                entry = self._unavailable(room, previous, exc)
            else:
                url = owner.internal_url if owner is not None else None
                LOOKUPS.labels("owner" if url else "none").inc()
                expires = owner.expires if owner is not None else 0.0
                entry = _Entry(url, expires, time.monotonic(), self.ttl)
            self._entries[room] = entry
            self._entries.move_to_end(room)
            while len(self._entries) > self.max_rooms:
                self._entries.popitem(last=False)
            CACHED_OWNERS.set(len(self._entries))
            return entry
        finally:
            self._pending.pop(room, None)

    def _unavailable(self, room: str, previous: _Entry | None, exc: RegistryError) -> _Entry:
        now = time.monotonic()
        if previous is not None and previous.url is not None and previous.lease_until > time.time():
            # Its lease cannot pass to another node before it runs out: keep the owner we know.
            log.warning("owner of room %s: %s; keeping %s until its lease runs out", room, exc,
                        previous.url)
            return _Entry(previous.url, previous.lease_until, now, self.retry)
        log.warning("owner of room %s: %s", room, exc)
        return _Entry(None, 0.0, now, self.retry,
                      error=f"the rooms database cannot be reached: the owner of room {room} "
                            "is unknown")


def _url(entry: _Entry) -> str | None:
    if entry.error is not None:
        raise DirectoryUnavailable(entry.error)
    return entry.url


# --- forwarding -----------------------------------------------------------------------------
class OwnerSilent(Exception):
    """The owner did not answer: refused, reset or timed out (`outcome` names which)."""

    def __init__(self, message: str, outcome: str) -> None:
        super().__init__(message)
        self.outcome = outcome


class TierBusy(Exception):
    """Every connection to the owners is in use."""


@dataclass(frozen=True, slots=True)
class OwnerAnswer:
    status: int
    headers: dict[str, str]  # the ones passed through: content-type, cache-control, age
    body: bytes
    length: str | None  # Content-Length, for HEAD


PASSED_HEADERS = ("content-type", "cache-control", "age")


class OwnerClient:
    """Pooled keep-alive connections to the owners' origins; httpx errors are translated here."""

    def __init__(self, timeout: float, max_connections: int) -> None:
        self._client = httpx.AsyncClient(
            # Waiting long for a pooled connection helps nobody: answer 503 and let the edge retry.
            timeout=httpx.Timeout(timeout, connect=CONNECT_SECONDS, pool=CONNECT_SECONDS),
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections, keepalive_expiry=30.0),
            headers={"accept-encoding": "identity", "user-agent": "townsquare-tier"},
            follow_redirects=False,
            trust_env=False,
        )

    async def fetch(self, base: str, target: str, method: str,
                    timeout: float | None = None) -> OwnerAnswer:
        limit: httpx.Timeout | None = None
        if timeout is not None:
            t = max(timeout, 0.05)
            limit = httpx.Timeout(t, connect=min(t, CONNECT_SECONDS), pool=CONNECT_SECONDS)
        url = base.rstrip("/") + target
        headers = relayed_report()  # an edge's audience report goes on to the owner unchanged
        try:
            if limit is None:
                r = await self._client.request(method, url, headers=headers)
            else:
                r = await self._client.request(method, url, headers=headers, timeout=limit)
        except httpx.PoolTimeout as exc:
            raise TierBusy("every connection to the owners is in use") from exc
        except httpx.TimeoutException as exc:
            raise OwnerSilent(f"{url} timed out", "timeout") from exc
        except httpx.HTTPError as exc:
            raise OwnerSilent(f"{url} failed: {exc!r}", "unreachable") from exc
        headers = {name: r.headers[name] for name in PASSED_HEADERS if name in r.headers}
        return OwnerAnswer(r.status_code, headers, r.content, r.headers.get("content-length"))

    async def aclose(self) -> None:
        await self._client.aclose()


class Missing(enum.Enum):
    """Why no owner answered."""

    NO_OWNER = "nobody owns the room"
    SILENT = "the room's owner does not answer"


# --- the store, counted ---------------------------------------------------------------------
class CountedStore:
    """A store whose reads are counted in `townsquare_tier_store_reads_total`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, key: str) -> bytes | None:
        try:
            data = await self.store.get(key)
        except StoreError:
            STORE_READS.labels("error").inc()
            raise
        STORE_READS.labels("hit" if data is not None else "miss").inc()
        return data

    async def put(self, key: str, data: bytes, cache_control: str) -> None:
        await self.store.put(key, data, cache_control)

    async def check(self) -> None:
        await self.store.check()

    async def expire(self, keys: list[str]) -> int:
        return await self.store.expire(keys)

    async def list(self, prefix: str) -> list[str]:
        return await self.store.list(prefix)

    def describe(self) -> str:
        return self.store.describe()


# --- answers --------------------------------------------------------------------------------
def _resp(body: bytes, status: int, kind: str, cache: str, ctype: str, method: str) -> Response:
    REQUESTS.labels(kind, str(status)).inc()
    return answer(body, status, cache, ctype, method)


def _error(status: int, kind: str, message: str, cache: str, method: str) -> Response:
    return _resp((message + "\n").encode(), status, kind, cache, "text/plain; charset=utf-8",
                 method)


def _passed(kind: str, answer: OwnerAnswer, method: str) -> Response:
    REQUESTS.labels(kind, str(answer.status)).inc()
    r = Response(b"" if method == "HEAD" else answer.body, answer.status,
                 headers={**CORS, **answer.headers})
    if method == "HEAD" and answer.length is not None:
        r.headers["Content-Length"] = answer.length
    return r


class Tier:
    """Answers one request: from the owner, from the store, or refused."""

    def __init__(self, store: Store, owners: OwnerDirectory, client: OwnerClient,
                 failover_wait: float, privacy: RoomPrivacy | None = None,
                 status: StatusDesk | None = None, room_list: RoomList | None = None) -> None:
        self.privacy: RoomPrivacy = privacy or NoPrivateRooms()
        # Status objects of rooms nobody publishes (waiting, ended), from the registry; the
        # directory of public rooms, from the registry too.
        self.status = status if status is not None else StatusDesk()
        self.room_list = room_list if room_list is not None else RoomList(None)
        self.store = CountedStore(store)
        self.owners = owners
        self.client = client
        self.failover_wait = failover_wait
        self.recordings = RecordingComposer(self.store)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def handle(self, request: Request) -> Response:
        method = request.method
        path = request.path_params["path"]
        relay_report(request.headers)
        found = public_object(path)
        if found is None:
            return _error(404, "other", "not found", REFUSED, method)
        obj, key = found
        kind: str = obj.kind
        # What owners are asked for: the request's own path, `/live/...` or `/private/...`.
        route = request.url.path
        if obj.kind == "directory":
            return await directory_answer(self.room_list, route, method, _resp)
        try:
            if not await served_here(self.privacy, obj.room, route):
                return _error(404, kind, "not found", REFUSED, method)
            if obj.kind == "status":
                return await self._status(obj.room, route, method)
            if obj.kind == "playlist":
                try:
                    d = parse_query(request.url.query)
                except BadDirective as exc:
                    return _error(400, kind, str(exc), REFUSED, method)
                # Only the directives go upstream, in canonical order: other parameters are noise.
                target = f"{route}?{d.query()}" if not d.empty else route
                if d.blocking:
                    kind = "blocking_playlist"
                    return await self._blocking(obj.room, target, key, method)
                return await self._live(obj.room, kind, target, key, method)
            if obj.kind == "master":
                return await self._live(obj.room, kind, route, key, method)
            if obj.kind == "recording":
                return await self._recording(obj, key, method)
            return await self._media(obj, key, method, route)
        except TierBusy as exc:
            return _error(503, kind, str(exc), NO_STORE, method)
        except (DirectoryUnavailable, PrivacyUnknown) as exc:
            return _error(503, kind, str(exc), SHORT, method)

    async def _ask_owner(self, room: str, target: str, method: str, hold: bool,
                         timeout: float | None = None,
                         retrying: bool = False) -> OwnerAnswer | Missing:
        """The owner's answer, after one fresh lookup if the owner first asked is silent."""
        tried: str | None = None
        for _ in range(2):
            url = await self.owners.owner_url(room, retrying=retrying or tried is not None)
            if url is None:
                return Missing.NO_OWNER
            if url == tried:
                break
            answer = await self._forward(room, url, target, method, hold, timeout)
            if answer is not None:
                return answer
            tried = url
        return Missing.SILENT

    async def _forward(self, room: str, url: str, target: str, method: str, hold: bool,
                       timeout: float | None) -> OwnerAnswer | None:
        try:
            answer = await self.client.fetch(url, target, method, timeout)
        except OwnerSilent as exc:
            FORWARDS.labels(exc.outcome).inc()
            log.info("room %s: owner %s", room, exc)
            self.owners.failed(room, url)
            return None
        except TierBusy:
            FORWARDS.labels("busy").inc()
            raise
        if answer.status == ELSEWHERE:
            # The epoch this request was held for stopped at that node (it is handing the room
            # over): the next owner carries the room on.
            FORWARDS.labels("moved").inc()
            log.info("room %s: %s no longer has it on air", room, url)
            self.owners.failed(room, url)
            return None
        # A held request's 503 is an answer (the part did not come in time); any other 5xx
        # means the owner cannot serve the room.
        if answer.status >= 500 and not (hold and answer.status == 503):
            FORWARDS.labels("failed").inc()
            log.info("room %s: owner %s answered %d for %s", room, url, answer.status, target)
            self.owners.failed(room, url)
            return None
        FORWARDS.labels("answered").inc()
        return answer

    async def _live(self, room: str, kind: str, target: str, key: str, method: str) -> Response:
        """A plain playlist or the master: the owner's, else the last copy in the store."""
        answer = await self._ask_owner(room, target, method, hold=False)
        if isinstance(answer, OwnerAnswer):
            return _passed(kind, answer, method)
        return await self._stored(key, kind, SHORT, method)

    async def _status(self, room: str, route: str, method: str) -> Response:
        """A room's status object: its owner's (only it knows who speaks), else, for a room
        nobody publishes, what the registry says of it."""
        answer = await self._ask_owner(room, route, method, hold=False)
        if isinstance(answer, OwnerAnswer):
            return _passed("status", answer, method)
        if answer is Missing.NO_OWNER:
            return await status_answer(self.status, room, method, _resp)
        return _error(503, "status", answer.value, SHORT, method)

    async def _blocking(self, room: str, target: str, key: str, method: str) -> Response:
        kind = "blocking_playlist"
        deadline = time.monotonic() + self.failover_wait
        timeout: float | None = None  # the first forward may be held as long as the owner likes
        looked_in_store = waiting = False
        try:
            while True:
                answer = await self._ask_owner(room, target, method, hold=True, timeout=timeout,
                                               retrying=waiting)
                if isinstance(answer, OwnerAnswer):
                    return _passed(kind, answer, method)
                if answer is Missing.NO_OWNER and not looked_in_store:
                    # An ended room has no owner: its stored playlist ends, directives ignored.
                    looked_in_store = True
                    stored = await self._read(key)
                    if stored is not None and ENDLIST in stored:
                        return _resp(stored, 200, kind, FINAL, PLAYLIST_TYPE, method)
                left = deadline - time.monotonic()
                if left <= 0:
                    return _error(503, kind, f"room {room} is changing owner: {answer.value}; "
                                  "try again", SHORT, method)
                if not waiting:
                    waiting = True
                    FAILOVER_WAITERS.inc()
                await asyncio.sleep(min(self.owners.retry, left))
                # A new owner's answer must come within the failover bound as well.
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    return _error(503, kind, f"room {room} is changing owner: {answer.value}; "
                                  "try again", SHORT, method)
        finally:
            if waiting:
                FAILOVER_WAITERS.dec()

    async def _media(self, obj: ObjectName, key: str, method: str, route: str) -> Response:
        """Init, segment or part: the store's copy, else the owner's (it may not be stored yet,
        or be a hinted part the owner holds until it exists)."""
        kind = obj.kind
        store_failed = False
        try:
            data = await self.store.get(key)
        except StoreError as exc:
            log.warning("store read %s failed: %s", key, exc)
            store_failed, data = True, None
        if data is not None:
            return _resp(data, 200, kind, IMMUTABLE, content_type_for_key(key), method)
        answer = await self._ask_owner(obj.room, route, method, hold=kind == "part")
        if isinstance(answer, OwnerAnswer):
            return _passed(kind, answer, method)
        if store_failed:
            return _error(503, kind, "storage unavailable", NO_STORE, method)
        if answer is Missing.NO_OWNER:
            return _error(404, kind, "not found", REFUSED, method)
        return _error(503, kind, answer.value, SHORT, method)

    async def _recording(self, obj: ObjectName, key: str, method: str) -> Response:
        # Composed from the store as the owner's origin would: the owner has nothing fresher.
        if obj.rendition is None or obj.broadcast is None:
            return await self._stored(key, "recording", max_age(2), method)
        try:
            stored = await self.store.get(key)
            text = stored if stored is not None else await self.recordings.compose(
                obj.room, obj.broadcast, obj.rendition)
        except StoreError as exc:
            log.warning("recording %s unavailable: %s", key, exc)
            return _error(503, "recording", "storage unavailable", NO_STORE, method)
        if text is None:
            return _error(404, "recording", "not found", REFUSED, method)
        cache = FINAL if ENDLIST in text else max_age(2)
        return _resp(text, 200, "recording", cache, PLAYLIST_TYPE, method)

    async def _read(self, key: str) -> bytes | None:
        try:
            return await self.store.get(key)
        except StoreError as exc:
            log.warning("store read %s failed: %s", key, exc)
            return None

    async def _stored(self, key: str, kind: str, cache: str, method: str) -> Response:
        return await stored_answer(self.store, key, kind, cache, method, _resp)


def build_tier_app(store: Store, registry: OwnerLookup, settings: TierSettings) -> Starlette:
    """The tier's HTTP app. `registry` is a `registry.Registry` (the caller opens and closes
    it). The app's connections to owners are closed by its lifespan, or by
    `await app.state.tier.aclose()` when it is served with the lifespan off
    (`serving.http.http_server`)."""
    owners = OwnerDirectory(registry, settings.tier_owner_cache_seconds, RETRY_SECONDS,
                            settings.tier_owner_cache_rooms)
    client = OwnerClient(settings.tier_forward_timeout_seconds, settings.tier_max_connections)
    privacy = RegistryPrivacy(registry, settings.tier_owner_cache_seconds,
                              settings.tier_owner_cache_rooms)
    tier = Tier(store, owners, client, settings.tier_failover_wait_seconds, privacy,
                StatusDesk(registry), RoomList(registry))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await tier.aclose()

    app = Starlette(routes=live_routes(tier.handle), lifespan=lifespan)
    app.state.tier = tier
    return app
