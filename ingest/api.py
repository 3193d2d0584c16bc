"""The control port: rooms API (admin token), WHIP, the broadcaster page, health, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import AfterValidator, BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hls.http import JSON_TYPE, STATUS_CACHE
from hls.names import ROOM_PATTERN, InvalidRoomName, is_valid_room
from hls.tokens import MAX_LIFETIME_SECONDS, KeyRing, listener_path, sign
from ingest.display import (
    DESCRIPTION_MAX,
    NAME_MAX,
    TITLE_MAX,
    BadText,
    check_description,
    check_speaker_name,
    check_title,
)
from ingest.errors import (
    BadKey,
    IngestError,
    OverLimit,
    RoomElsewhere,
    RoomEnded,
    RoomError,
    RoomExists,
    RoomFull,
    RoomNotFound,
    SdpError,
    Unavailable,
    UnsupportedCodec,
)
from ingest.key_sync import KEY_SYNC_PATH, tell_nodes
from ingest.limits import RateLimiter, retry_after_header
from ingest.metrics import IngestMetrics
from ingest.relay import RELAY_PATH, RELAYED_PATH
from ingest.relay import receive as receive_relay
from ingest.rooms import Room, Rooms
from ingest.whip import MAX_SDP_BYTES, WhipEndpoint
from packager.status import StatusDesk, StatusUnavailable
from registry import RegistryError
from serving.tasks import cancel_and_wait

log = logging.getLogger("townsquare.ingest.api")
RELAY_RESUME_WAIT = 5.0  # seconds a relay waits for a room this node is putting on air
MAX_BODY = 65_536


@dataclass(frozen=True)
class PublicUrls:
    control: str  # http://host:control_port
    rtmp: str  # rtmp://host:rtmp_port
    edge: str  # where listeners go
    origin: str  # where playlists are served


Title = Annotated[str, Field(max_length=TITLE_MAX, description="What listeners read first: "
                             "one line of printable text."), AfterValidator(check_title)]
Description = Annotated[str, Field(max_length=DESCRIPTION_MAX, description="What the room is "
                                   "about: printable text, line breaks allowed."),
                        AfterValidator(check_description)]
SpeakerName = Annotated[str, Field(max_length=NAME_MAX, description="A speaker's display "
                                   "name: one line of printable text."),
                        AfterValidator(check_speaker_name)]


class CreateRoom(BaseModel):
    name: str | None = Field(
        default=None, pattern=ROOM_PATTERN, description="Room name; a random one when omitted."
    )
    private: bool = Field(
        default=False, description="Listeners need a signed, expiring URL "
        "(POST /rooms/{room}/listener-urls); the room is never served under /live/.")
    title: Title = ""
    description: Description = ""


class RoomInfo(BaseModel):
    """What PATCH /rooms/{room} changes; a field left out stays as it is."""

    title: Title | None = None
    description: Description | None = None


class SpeakerNameBody(BaseModel):
    name: SpeakerName


class RelayedChange(BaseModel):
    """What a room's owner tells the node a relayed speaker came from; None: unchanged."""

    muted: bool | None = None
    name: SpeakerName | None = None


# Listener URLs of private rooms: 6 h by default (a long show), a minute at least.
DEFAULT_LISTEN_SECONDS = 6 * 3600
MIN_LISTEN_SECONDS = 60


class RoomCreated(BaseModel):
    name: str
    stream_key: str = Field(description="Shown once: only its hash is kept.")
    rtmp_url: str = Field(description="Server URL for OBS; the stream key goes in its own field.")
    rtmp_publish_url: str = Field(description="Full URL for ffmpeg: server URL + '/' + key.")
    whip_url: str
    broadcast_page_url: str
    listener_url: str | None = Field(description="For a private room: signed, valid for "
                                     f"{DEFAULT_LISTEN_SECONDS // 3600} h (None when no token "
                                     "keys are set); more from POST /rooms/{room}/listener-urls.")
    playlist_url: str | None
    state: str
    private: bool = False
    key_generation: int = 1
    title: str = ""
    description: str = ""


class ListenerUrlRequest(BaseModel):
    lifetime_seconds: int = Field(
        default=DEFAULT_LISTEN_SECONDS, ge=MIN_LISTEN_SECONDS, le=int(MAX_LIFETIME_SECONDS),
        description="How long the URL works; a player stops at the first request after it.")


class ListenerUrls(BaseModel):
    room: str
    token: str
    expires_at: str
    listener_url: str = Field(description="The listener page, on the edge.")
    playlist_url: str = Field(description="The master playlist, for any HLS player.")


class MuteRequest(BaseModel):
    muted: bool = True


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(RELAY_PATH):
            # A relayed speaker's audio is a body as long as they speak (bounded by time).
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = True
                if too_big:
                    await _plain(send, 413, f"request body over {self.limit} bytes")
                    return
        seen = 0
        over = answered = False

        async def limited() -> Message:
            nonlocal seen, over
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _TooLarge()
            return msg

        async def guarded(msg: Message) -> None:
            # A route may catch _TooLarge and answer on its own (FastAPI turns any error
            # reading a JSON body into 400): once over the bound, the answer is 413.
            nonlocal answered
            if not over:
                await send(msg)
            elif msg["type"] == "http.response.start" and not answered:
                answered = True
                await _plain(send, 413, f"request body over {self.limit} bytes")

        try:
            await self.app(scope, limited, guarded)
        except Exception:
            # _TooLarge, or whatever a middleware on the way wrapped it in (an exception
            # group from BaseHTTPMiddleware's task group).
            if not over:
                raise
            if not answered:
                await _plain(send, 413, f"request body over {self.limit} bytes")


class _TooLarge(Exception):
    pass


@dataclass(frozen=True)
class ApiLimits:
    """Request rate per client address and per bearer token, and the body size bound. The
    service sets a rate from its settings; without one (an app embedded in a test or a tool)
    requests are not rate-limited, bodies always are."""

    rate_per_second: float | None = None
    burst: int = 40
    max_body: int = MAX_BODY


# Scrapes and cluster-internal relays are not clients to slow down.
_UNLIMITED_PATHS = ("/healthz", "/metrics", RELAY_PATH, RELAYED_PATH)


class RateLimit:
    """429 with Retry-After once a client address, or a bearer token from any address,
    spends its token bucket. Both are checked, so rotating random tokens buys nothing."""

    def __init__(self, app: ASGIApp, limits: ApiLimits, metrics: IngestMetrics) -> None:
        self.app, self._metrics = app, metrics
        rate = limits.rate_per_second or 1.0
        self._by_address = RateLimiter(rate, limits.burst)
        self._by_token = RateLimiter(rate, limits.burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(_UNLIMITED_PATHS):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        wait = self._by_address.take(str(client[0]) if client else "?")
        limit = "api_rate_per_address"
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                # Keyed by a digest: the table must not keep stream keys or admin tokens.
                token = hashlib.sha256(value).hexdigest()[:32]
                by_token = self._by_token.take(token)
                if by_token > wait:
                    wait, limit = by_token, "api_rate_per_token"
                break
        self._metrics.rate_keys.set(self._by_address.keys + self._by_token.keys)
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        self._metrics.limit_hits.labels(limit=limit).inc()
        self._metrics.http_requests.labels(status="4xx").inc()
        await _plain(send, 429, f"too many requests ({limit}); retry after "
                                f"{retry_after_header(wait)} s",
                     [(b"retry-after", retry_after_header(wait).encode()),
                      *((k.lower().encode(), v.encode()) for k, v in _CORS.items())])


async def _plain(send: Send, status: int, text: str,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


# How a relay is refused or let go: the relaying node is still sending and reads no answer
# before its body ends, so the connection is closed; it asks again at once (the relay's own
# check), and anything else that sends there may too.
_LET_GO = {"Connection": "close", "Retry-After": "1"}


def build_app(
    rooms: Rooms,
    whip: WhipEndpoint,
    metrics: IngestMetrics,
    admin_token: str,
    urls: PublicUrls,
    health: Any = None,
    limits: ApiLimits | None = None,
    token_keys: KeyRing | None = None,
    status: StatusDesk | None = None,
) -> FastAPI:
    """The control API. `status`: the desk rooms' status objects come from, shared with the
    origin beside it (without one, a desk on these rooms and their registry)."""
    # /docs (Swagger UI) and /redoc load their scripts from this server, not from a CDN:
    # operators in closed networks get the API docs too.
    app = FastAPIOffline(
        title="townsquare ingest",
        description="Rooms, stream keys and speakers; WHIP publishing; the broadcaster page.",
        version="1",
    )
    bearer = HTTPBearer(auto_error=False)
    if status is None:
        status = StatusDesk(rooms.registry)
        status.attach(rooms)
    desk = status

    def admin(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        given = creds.credentials if creds is not None else ""
        if not hmac.compare_digest(given.encode(), admin_token.encode()):
            raise HTTPException(401, "admin token required (Authorization: Bearer …)",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        metrics.http_requests.labels(status=f"{response.status_code // 100}xx").inc()
        return response

    @app.exception_handler(IngestError)
    async def ingest_error(request: Request, exc: IngestError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=_status(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes the offending input, raw bytes included, and cannot
        # encode a body that is not UTF-8 (a 500; fastapi/fastapi#13111). Where and why is
        # enough for a client; the input is theirs already.
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")}
                  for e in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    async def room_or_404(name: str) -> Room:
        if not is_valid_room(name):
            raise HTTPException(404, f"room name {name!r} does not match {ROOM_PATTERN}")
        return await rooms.find(name)

    ring = token_keys or KeyRing(())

    def listener_urls(room: Room, lifetime: int) -> ListenerUrls:
        if not ring:
            raise HTTPException(503, "no listener token keys are set "
                                     "(TOWNSQUARE_LISTENER_TOKEN_KEYS): private rooms cannot be "
                                     "listened to")
        expires = int(time.time()) + lifetime
        token = sign(ring, room.name, expires)
        return ListenerUrls(
            room=room.name, token=token, expires_at=_iso_utc(expires),
            listener_url=f"{urls.edge}/listen/{room.name}?token={token}",
            playlist_url=f"{urls.edge}{listener_path(token, room.name)}")

    def created(room: Room, key: str) -> RoomCreated:
        if room.private:
            signed = listener_urls(room, DEFAULT_LISTEN_SECONDS) if ring else None
            return RoomCreated(
                name=room.name, stream_key=key, rtmp_url=f"{urls.rtmp}/live",
                rtmp_publish_url=f"{urls.rtmp}/live/{key}",
                whip_url=f"{urls.control}/whip/{room.name}",
                broadcast_page_url=f"{urls.control}/broadcast/{room.name}",
                listener_url=signed.listener_url if signed else None,
                playlist_url=signed.playlist_url if signed else None,
                state=room.state, private=True, key_generation=room.key_generation,
                title=room.title, description=room.description)
        return RoomCreated(
            name=room.name,
            stream_key=key,
            rtmp_url=f"{urls.rtmp}/live",
            rtmp_publish_url=f"{urls.rtmp}/live/{key}",
            whip_url=f"{urls.control}/whip/{room.name}",
            broadcast_page_url=f"{urls.control}/broadcast/{room.name}",
            listener_url=f"{urls.edge}/listen/{room.name}",
            playlist_url=f"{urls.origin}/live/{room.name}/master.m3u8",
            state=room.state,
            key_generation=room.key_generation,
            title=room.title,
            description=room.description,
        )

    # --- rooms ------------------------------------------------------------------------
    @app.post("/rooms", status_code=201, response_model=RoomCreated, dependencies=[Depends(admin)],
              tags=["rooms"], summary="Create a room; its stream key is shown only here")
    async def create_room(body: CreateRoom | None = None) -> RoomCreated:
        try:
            body = body or CreateRoom()
            room, key = await rooms.create(body.name, private=body.private, title=body.title,
                                           description=body.description)
        except InvalidRoomName as exc:
            raise HTTPException(422, str(exc)) from exc
        return created(room, key)

    @app.get("/rooms", dependencies=[Depends(admin)], tags=["rooms"], summary="All rooms")
    async def list_rooms() -> dict[str, Any]:
        await rooms.load_open()  # in a cluster, rooms other nodes created or publish too
        return {"rooms": [r.describe() for r in rooms.all()]}

    @app.get("/rooms/{room}", dependencies=[Depends(admin)], tags=["rooms"],
             summary="A room's state: live or not, speakers, started at, duration")
    async def get_room(room: str) -> dict[str, Any]:
        r = await room_or_404(room)
        await rooms.refresh(r)
        return r.describe()

    @app.patch("/rooms/{room}", dependencies=[Depends(admin)], tags=["rooms"],
               summary="Change a room's title or description (also once it has ended)")
    async def edit_room(room: str, body: RoomInfo) -> Any:
        r = await known_room(room)
        forwarded = await on_owner(r, "PATCH", f"/rooms/{room}",
                                   body.model_dump(exclude_none=True))
        if forwarded is not None:
            await rooms.refresh(r)
            return forwarded
        await rooms.set_info(r, body.title, body.description)
        return r.describe()

    @app.get("/rooms/{room}/status", tags=["rooms"],
             summary="The room's status object (title, state, speakers and who is speaking, "
                     "audience), as listeners get it at /live/{room}/status.json; no token "
                     "for a public room, the stream key or the admin token for a private one",
             responses={200: {"content": {JSON_TYPE: {}}}})
    async def room_status(room: str, request: Request) -> Response:
        if not is_valid_room(room):
            raise HTTPException(404, f"room name {room!r} does not match {ROOM_PATTERN}")
        r: Room | None = None
        with contextlib.suppress(RoomNotFound, Unavailable):
            r = await rooms.find(room)
        if r is not None and r.private and not may_see(r, request):
            raise HTTPException(404, f"no room named {room!r}")
        if r is not None:
            forwarded = await on_owner(r, "GET", f"/rooms/{room}/status")
            if forwarded is not None:
                return forwarded
        try:
            body = await desk.status(room)
        except StatusUnavailable as exc:
            raise HTTPException(503, str(exc)) from exc
        if body is None or (r is None and await hidden(room)):
            raise HTTPException(404, f"no room named {room!r}")
        return Response(body, media_type=JSON_TYPE, headers={"Cache-Control": STATUS_CACHE})

    def may_see(r: Room, request: Request) -> bool:
        """A private room's status is for its broadcasters and operators only."""
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            return False
        if hmac.compare_digest(given.encode(), admin_token.encode()):
            return True
        try:
            rooms.check_key(r.name, given)
        except (BadKey, RoomEnded):
            return False
        return True

    async def hidden(room: str) -> bool:
        """A room this node does not hold (ended, from the registry): private ones stay
        unseen here, as under /live/."""
        if rooms.registry is None:
            return False
        try:
            return (await rooms.registry.private_rooms([room])).get(room, False)
        except RegistryError:
            return True

    async def known_room(name: str) -> Room:
        """The room, also when it has ended: its title still shows beside its recording."""
        try:
            return await room_or_404(name)
        except RoomNotFound:
            if rooms.registry is None:
                raise
        try:
            rec = await rooms.registry.get_room(name)
        except RegistryError as exc:
            raise Unavailable(f"room {name!r} cannot be looked up now: {exc}") from exc
        if rec is None:
            raise RoomNotFound(f"no room named {name!r}")
        return Room(rec.name, rec.key_hash, rec.created_at, state=rec.state,
                    started_at=rec.started_at, ended_at=rec.ended_at, end_reason=rec.end_reason,
                    broadcast_id=rec.broadcast_id, epoch=rec.epoch, next_msn=rec.next_msn,
                    private=rec.private, key_generation=rec.key_generation, title=rec.title,
                    description=rec.description)

    async def on_owner(r: Room, method: str, path: str, body: Any = None) -> Response | None:
        """In a cluster, send a request about a room another node publishes to that node
        (it mixes the room's speakers and ends it); None when this node is the one."""
        owner = await rooms.owner_api(r)
        if owner is None:
            return None
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.request(method, f"{owner}{path}", json=body,
                                          headers={"Authorization": f"Bearer {admin_token}"})
        if answer.status_code >= 500:
            raise HTTPException(502, f"the node publishing {r.name!r} answered "
                                     f"{answer.status_code}: {answer.text[:200]}")
        return Response(answer.content, answer.status_code,
                        media_type=answer.headers.get("content-type"))

    @app.post("/rooms/{room}/listener-urls", status_code=201, response_model=ListenerUrls,
              dependencies=[Depends(admin)], tags=["rooms"],
              summary="A signed, expiring listener URL for a private room")
    async def make_listener_urls(room: str, body: ListenerUrlRequest | None = None
                                 ) -> ListenerUrls:
        r = await room_or_404(room)
        if not r.private:
            raise HTTPException(409, f"room {room!r} is public: /live/{room}/master.m3u8 "
                                     "needs no token")
        return listener_urls(r, (body or ListenerUrlRequest()).lifetime_seconds)

    async def changed_key(r: Room, revoke: bool) -> dict[str, Any]:
        key = await rooms.replace_key(r, revoke=revoke)
        nodes = await tell_nodes(rooms, r.name, admin_token)
        out: dict[str, Any] = {"name": r.name, "key_generation": r.key_generation,
                               "key_revoked": revoke, "nodes_told": nodes}
        if key is not None:
            out.update(created(r, key).model_dump(include={
                "stream_key", "rtmp_url", "rtmp_publish_url", "whip_url"}))
        return out

    @app.post("/rooms/{room}/key", dependencies=[Depends(admin)], tags=["keys"],
              summary="Rotate the stream key: the new one is shown once, the old one stops "
                      "working at once and its live speakers are disconnected, on every node")
    async def rotate_key(room: str) -> dict[str, Any]:
        return await changed_key(await room_or_404(room), revoke=False)

    @app.delete("/rooms/{room}/key", dependencies=[Depends(admin)], tags=["keys"],
                summary="Revoke the stream key: no key works until the next rotation; live "
                        "speakers it admitted are disconnected, on every node")
    async def revoke_key(room: str) -> dict[str, Any]:
        return await changed_key(await room_or_404(room), revoke=True)

    @app.post(KEY_SYNC_PATH + "{room}", include_in_schema=False, dependencies=[Depends(admin)])
    async def sync_key(room: str) -> dict[str, Any]:
        """Another node changed the room's key: read it again, drop what the old one admitted."""
        r = await room_or_404(room)
        dropped = await rooms.sync_key(r)
        return {"name": r.name, "key_generation": r.key_generation, "disconnected": dropped}

    @app.post("/rooms/{room}/end", dependencies=[Depends(admin)], tags=["rooms"],
              summary="End the room: ENDLIST on its playlists, the recording kept")
    async def end_room(room: str) -> Any:
        r = await room_or_404(room)
        forwarded = await on_owner(r, "POST", f"/rooms/{room}/end")
        if forwarded is not None:
            await rooms.refresh(r)
            return forwarded
        await rooms.end(r, "ended by request")
        return r.describe()

    @app.post("/rooms/{room}/speakers/{speaker}/mute", dependencies=[Depends(admin)],
              tags=["speakers"], summary="Mute or unmute a speaker in the mix")
    async def mute(room: str, speaker: str, body: MuteRequest | None = None) -> Any:
        r = await room_or_404(room)
        forwarded = await on_owner(r, "POST", f"/rooms/{room}/speakers/{speaker}/mute",
                                   body.model_dump() if body else None)
        if forwarded is not None:
            return forwarded
        s = await rooms.mute(r, speaker, body.muted if body else True)
        return s.describe()

    @app.put("/rooms/{room}/speakers/{speaker}/name", dependencies=[Depends(admin)],
             tags=["speakers"], summary="Change a speaker's display name")
    async def rename(room: str, speaker: str, body: SpeakerNameBody) -> Any:
        r = await room_or_404(room)
        forwarded = await on_owner(r, "PUT", f"/rooms/{room}/speakers/{speaker}/name",
                                   body.model_dump())
        if forwarded is not None:
            return forwarded
        if not body.name:
            raise HTTPException(422, "name must not be empty")
        return (await rooms.rename(r, speaker, body.name)).describe()

    @app.delete("/rooms/{room}/speakers/{speaker}", status_code=204, dependencies=[Depends(admin)],
                tags=["speakers"], summary="Disconnect a speaker")
    async def remove(room: str, speaker: str) -> Response:
        r = await room_or_404(room)
        forwarded = await on_owner(r, "DELETE", f"/rooms/{room}/speakers/{speaker}")
        if forwarded is not None:
            return forwarded
        await rooms.remove(r, speaker)
        return Response(status_code=204)

    # --- WHIP -------------------------------------------------------------------------
    def stream_key(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise HTTPException(401, "stream key required (Authorization: Bearer {key})",
                                headers={"WWW-Authenticate": "Bearer"})
        return key.strip()

    @app.options("/whip/{room}", include_in_schema=False)
    async def whip_options(room: str) -> Response:
        return Response(status_code=204, headers={
            **_CORS, "Accept-Post": "application/sdp",
            "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS",
        })

    @app.options("/whip/{room}/{session_id}", include_in_schema=False)
    async def whip_resource_options(room: str, session_id: str) -> Response:
        return Response(status_code=204, headers={
            **_CORS, "Access-Control-Allow-Methods": "DELETE, OPTIONS"})

    @app.post("/whip/{room}", tags=["whip"], status_code=201,
              summary="WHIP: publish into a room (Bearer stream key, SDP offer body); "
                      "`?name=` is the speaker's display name",
              responses={201: {"content": {"application/sdp": {}}}})
    async def whip_post(room: str, request: Request, name: str | None = None) -> Response:
        try:
            shown = check_speaker_name(name or "") or None
        except BadText as exc:
            raise HTTPException(422, f"name: {exc}", headers=_CORS) from exc
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/sdp":
            metrics.whip_sessions.labels(outcome="bad_type").inc()
            raise HTTPException(415, "the offer must be sent as Content-Type: application/sdp",
                                headers=_CORS)
        key = stream_key(request)
        body = await request.body()
        if len(body) > MAX_SDP_BYTES:
            raise HTTPException(413, f"SDP offer over {MAX_SDP_BYTES} bytes")
        if not is_valid_room(room):
            raise HTTPException(404, "no such room", headers=_CORS)
        try:
            await rooms.find(room)  # a room another node created is read from the registry
        except RoomNotFound:
            pass  # check_key answers as for a wrong key: nothing tells which rooms exist
        if rooms.node is not None:
            # Another node may have rotated or revoked the key: the registry says which counts.
            with contextlib.suppress(RoomNotFound, Unavailable):
                await rooms.sync_key(await rooms.find(room))
        try:
            r = rooms.check_key(room, key)
            generation = r.key_generation
        except BadKey as exc:
            metrics.publish_refused.labels(protocol="whip", reason="key").inc()
            raise HTTPException(401, str(exc), headers={**_CORS, "WWW-Authenticate": "Bearer"}
                                ) from exc
        remote = f"{request.client.host}:{request.client.port}" if request.client else "?"
        try:
            session = await whip.offer(r, body, remote, shown)
        except OverLimit as exc:
            metrics.whip_sessions.labels(outcome=exc.limit).inc()
            log.warning("whip %s from %s refused: %s", room, remote, exc)
            wait = {"Retry-After": retry_after_header(exc.retry_after or 1.0)}
            return PlainTextResponse(str(exc), status_code=429, headers={**_CORS, **wait})
        except (SdpError, UnsupportedCodec, RoomError) as exc:
            metrics.whip_sessions.labels(outcome=type(exc).__name__).inc()
            log.info("whip %s from %s refused: %s", room, remote, exc)
            return PlainTextResponse(str(exc), status_code=_status(exc), headers=_CORS)
        if session.speaker is not None and session.speaker.key_generation != generation:
            # The key changed while the offer was being answered: it no longer counts.
            await session.close("stream key replaced during the offer")
            metrics.publish_refused.labels(protocol="whip", reason="key").inc()
            raise HTTPException(401, "stream key is no longer valid", headers=_CORS)
        metrics.whip_sessions.labels(outcome="created").inc()
        location = f"/whip/{room}/{session.id}"
        return Response(session.answer_sdp, status_code=201, media_type="application/sdp",
                        headers={**_CORS, "Location": location, "ETag": f'"{session.id}"'})

    @app.delete("/whip/{room}/{session_id}", tags=["whip"], status_code=200,
                summary="WHIP: end a session")
    async def whip_delete(room: str, session_id: str, request: Request) -> Response:
        key = stream_key(request)
        session = whip.get(room, session_id)
        if session is None:
            raise HTTPException(404, "no such WHIP session", headers=_CORS)
        try:
            rooms.check_key(room, key)
        except RoomEnded:
            pass  # the room ended under the session: deleting it is still fine
        except BadKey as exc:
            raise HTTPException(401, str(exc), headers=_CORS) from exc
        await session.close("DELETE by the publisher")
        return Response(status_code=200, headers=_CORS)

    @app.patch("/whip/{room}/{session_id}", include_in_schema=False)
    async def whip_patch(room: str, session_id: str) -> Response:
        # No trickle ICE or ICE restart: every candidate is in the answer (RFC 9725 §4.3).
        return Response("trickle ICE is not supported", status_code=405,
                        headers={**_CORS, "Allow": "DELETE, OPTIONS"})

    # --- page, health, metrics -------------------------------------------------------
    def elsewhere(r: Room) -> bool:
        """Whether a relay into `r` cannot be taken here: a node of a cluster that does not
        publish the room (now), or is stopping it."""
        return rooms.node is not None and (not r.on_air or r.stopping)

    async def relay_target(room: str) -> Room:
        """The room a relay is for, once this node publishes it. The relaying node found this
        node in the registry: a room it has just adopted may still be resuming, so it is
        waited for, briefly (not by a node that is leaving the cluster)."""
        r = await room_or_404(room)
        deadline = time.monotonic() + RELAY_RESUME_WAIT
        while rooms.node is not None and not rooms.node.draining and not r.on_air \
                and r.state != "ended" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return r

    @app.get(RELAY_PATH + "{room}", include_in_schema=False, dependencies=[Depends(admin)],
             status_code=204)
    async def relay_ready(room: str) -> Response:
        """Whether a relay into `room` would be taken now. The relaying node asks first: a
        refusal of the relay itself would wait behind its request body, which ends only when
        the speaker stops."""
        r = await relay_target(room)
        if r.state == "ended":
            raise HTTPException(410, f"room {room!r} has ended")
        if elsewhere(r):
            raise HTTPException(503, f"room {room!r} is not on air on this node")
        return Response(status_code=204)

    @app.post(RELAY_PATH + "{room}", include_in_schema=False, dependencies=[Depends(admin)],
              status_code=204)
    async def relay_in(room: str, request: Request) -> Response:
        """Another node of the cluster relays a speaker's audio into a room published here."""
        r = await relay_target(room)
        if elsewhere(r):
            # Not published here (any more): a hand-over or a lost lease came between the
            # relaying node's question and its relay. Joined, the speaker would wait in a
            # room nothing mixes, and nothing would drop them: a stopping node would hold
            # the relay for as long as they talk. Refused before a byte is read; closing
            # the connection is what tells the relaying node, which asks again.
            return Response(f"room {room!r} is not on air on this node", status_code=503,
                            headers=_LET_GO)
        remote = f"relay from {request.client.host}" if request.client else "relay"
        try:
            shown = check_speaker_name(request.query_params.get("name", "")) or None
        except BadText:
            shown = None  # the relaying node checked it; a default is better than no voice
        dropped = asyncio.Event()

        async def drop() -> None:
            dropped.set()

        # Dropped when the speaker is removed or the room stops here (a hand-over, a lost
        # lease): the relay ends at once. The relaying node then asks whether this node
        # still takes relays: if so it disconnects the speaker, else it carries them on to
        # the room's next owner.
        speaker = rooms.join(r, "relay", remote, disconnect=drop, name=shown)
        # Where it comes from, told of mutes and renames made here; muted as it was.
        source = (request.query_params.get("node", ""), request.query_params.get("speaker", ""))
        if all(source):
            speaker.source = source
        if request.query_params.get("muted") == "1":
            speaker.input.mute(True)
        reading = asyncio.create_task(receive_relay(request.stream(), speaker.push))
        ended = asyncio.create_task(dropped.wait())
        try:
            await asyncio.wait((reading, ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            rooms.leave(r, speaker)
            ended.cancel()
            if not reading.done():
                await cancel_and_wait(reading)
        if reading.cancelled():
            log.info("room %s: relayed speaker %s let go (removed, or the room stopped "
                     "here)", room, speaker.id)
            # The relaying node is still sending: closing the connection is what tells it
            # (it reads no answer before its body ends).
            return Response(f"relayed speaker {speaker.id} let go: removed, or room {room!r} "
                            "stopped on this node", status_code=503,
                            headers=_LET_GO)
        samples = reading.result()  # its error, if the relay failed, goes on up
        log.info("room %s: relayed speaker %s ended after %.1f s", room, speaker.id,
                 samples / 48_000)
        return Response(status_code=204)

    @app.post(RELAYED_PATH + "{room}/{speaker}", include_in_schema=False,
              dependencies=[Depends(admin)], status_code=204)
    async def relayed_changed(room: str, speaker: str, body: RelayedChange) -> Response:
        """The owner of a room changed a speaker relayed to it from this node."""
        r = await room_or_404(room)
        name = None
        if body.name is not None:
            try:
                name = check_speaker_name(body.name)
            except BadText as exc:
                raise HTTPException(422, str(exc)) from exc
        if not rooms.relayed_changed(r, speaker, body.muted, name or None):
            raise HTTPException(404, f"no speaker {speaker!r} of room {room!r} is relayed "
                                     "from this node")
        return Response(status_code=204)

    @app.get("/broadcast/{room}", response_class=HTMLResponse, tags=["page"],
             summary="The broadcaster page: microphone → WHIP")
    async def broadcast_page(room: str) -> HTMLResponse:
        await room_or_404(room)
        return HTMLResponse(_page(), headers={"Cache-Control": "no-store"})

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        out: dict[str, Any] = {"status": "ok",
                               "rooms_live": sum(r.state == "live" for r in rooms.all()),
                               "whip_sessions": len(whip.sessions)}
        if health is not None:
            out.update(health())
        return out

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    limits = limits or ApiLimits()
    app.add_middleware(BodyLimit, limit=limits.max_body)
    if limits.rate_per_second is not None:  # outermost: the cheapest refusal comes first
        app.add_middleware(RateLimit, limits=limits, metrics=metrics)
    return app


_CORS = {"Access-Control-Allow-Origin": "*",
         "Access-Control-Allow-Headers": "Authorization, Content-Type",
         "Access-Control-Expose-Headers": "Location, ETag"}


def _status(exc: Exception) -> int:
    if isinstance(exc, RoomNotFound):
        return 404
    if isinstance(exc, RoomExists):
        return 409
    if isinstance(exc, (RoomEnded,)):
        return 410
    if isinstance(exc, (RoomFull, Unavailable, RoomElsewhere)):
        return 503
    if isinstance(exc, BadKey):
        return 401
    if isinstance(exc, UnsupportedCodec):
        return 406
    if isinstance(exc, SdpError):
        return 400
    return 400


_PAGE: str | None = None


def _page() -> str:
    global _PAGE
    if _PAGE is None:
        _PAGE = resources.files("ingest").joinpath("static/broadcast.html").read_text("utf-8")
    return _PAGE


def _iso_utc(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
