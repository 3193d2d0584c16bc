"""`ingest.service.run`: the control API, WHIP, the broadcaster page and RTMP, until cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from hls.tokens import KeyRing, KeyRingError
from ingest.api import ApiLimits, PublicUrls, build_app
from ingest.capture import play
from ingest.errors import ConfigError, RoomExists, Unavailable
from ingest.metrics import IngestMetrics
from ingest.node import Node
from ingest.presence import PresenceWriter
from ingest.rooms import RoomPolicy, Rooms
from ingest.rtmp.server import RtmpServer
from ingest.settings import IngestSettings
from ingest.sources import MediaSource, SourceError, TestSignal
from ingest.whip import WhipEndpoint, allow_loopback_candidates
from packager.ladder import SAMPLE_RATE
from packager.status import StatusDesk
from registry import Registry, RegistryError, default_url
from serving.http import http_server, serve_http
from serving.tasks import cancel_and_wait

log = logging.getLogger("townsquare.ingest")
MIN_ADMIN_TOKEN = 16


@dataclass
class DemoRoom:
    """A room opened at start with the generated test signal as its first speaker, so a
    new user hears something at once; `key` is filled in so others can join as co-hosts.
    The title and the speaker's name are what the directory and the listener page show."""

    name: str
    key: str | None = None
    title: str = "townsquare demo"
    speaker: str = "Test tone"


async def _open_demo(rooms: Rooms, demo: DemoRoom) -> asyncio.Task[int]:
    """The demo room, created or, when it is still open from an earlier run, resumed (its
    key is unchanged then, and shown only when it was made)."""
    try:
        room, key = await rooms.create(demo.name, title=demo.title)
        demo.key = key
    except RoomExists:
        room = rooms.get(demo.name)
        log.info("demo room %s resumed (%s); its stream key is unchanged", demo.name, room.state)
        if not room.title:  # made by a version without titles
            with contextlib.suppress(Unavailable):
                await rooms.set_info(room, title=demo.title)
    await rooms.admit(room)
    speaker = rooms.join(room, "local", "test signal", name=demo.speaker)
    return asyncio.create_task(play(TestSignal(), speaker.push), name=f"demo-{demo.name}")


def check_settings(settings: IngestSettings) -> str:
    """The admin token, once every setting ingest relies on has been checked."""
    token = settings.admin_token or ""
    if len(token) < MIN_ADMIN_TOKEN:
        raise ConfigError(
            f"TOWNSQUARE_ADMIN_TOKEN must be set to at least {MIN_ADMIN_TOKEN} characters "
            "(the rooms API hands out stream keys with it); `townsquare up` generates one"
        )
    if settings.max_speakers_per_room < 10:
        raise ConfigError("max_speakers_per_room must be at least 10 (a panel with co-hosts)")
    if settings.idle_timeout_seconds < 5:
        raise ConfigError("idle_timeout_seconds must be at least 5 (reconnects take seconds)")
    return token


def listener_token_keys(settings: IngestSettings) -> KeyRing:
    """The ring private rooms' listener URLs are signed with (the newest key signs); an empty
    ring when unset. ConfigError names a bad entry, never a secret."""
    try:
        return KeyRing.parse(settings.listener_token_keys)
    except KeyRingError as exc:
        raise ConfigError(f"TOWNSQUARE_LISTENER_TOKEN_KEYS: {exc}") from exc


def load_hold_audio(spec: str | None, max_seconds: float) -> np.ndarray | None:
    """The hold audio as program PCM, or None; ConfigError names the file that failed."""
    if not spec:
        return None
    try:
        source = MediaSource(spec)
    except SourceError as exc:
        raise ConfigError(f"TOWNSQUARE_HOLD_AUDIO: {exc}") from exc
    try:
        pcm = source.read(int(max_seconds * SAMPLE_RATE))
    except SourceError as exc:
        raise ConfigError(f"TOWNSQUARE_HOLD_AUDIO: {exc}") from exc
    finally:
        source.close()
    if pcm is None or pcm.shape[1] < 4800:
        raise ConfigError(f"TOWNSQUARE_HOLD_AUDIO: {spec} holds less than 0.1 s of audio")
    log.info("hold audio: %s (%.1f s, looped)", spec, pcm.shape[1] / SAMPLE_RATE)
    return np.ascontiguousarray(pcm, dtype=np.float32)


def public_urls(settings: IngestSettings) -> PublicUrls:
    host = settings.host
    show = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in show and not show.startswith("["):
        show = f"[{show}]"
    origin = f"http://{show}:{settings.origin_port}"
    return PublicUrls(
        control=(settings.public_control_url or f"http://{show}:{settings.control_port}").rstrip("/"),
        rtmp=(settings.public_rtmp_url or f"rtmp://{show}:{settings.rtmp_port}").rstrip("/"),
        edge=(settings.public_edge_url or origin).rstrip("/"),
        origin=origin,
    )


async def open_registry(settings: IngestSettings) -> Registry:
    """The room registry the settings name (SQLite in the data folder by default), migrated,
    with any rooms.json of an older version imported; ConfigError when it cannot be used."""
    url = settings.database_url or default_url(settings.data_dir)
    try:
        registry = await Registry.open(url)
    except RegistryError as exc:
        raise ConfigError(f"the room database cannot be used: {exc}") from exc
    try:
        imported = await registry.import_legacy(settings.data_dir / "ingest" / "rooms.json")
    except RegistryError as exc:
        await registry.close()
        raise ConfigError(str(exc)) from exc
    if imported:
        log.info("imported %d rooms from rooms.json into %s", imported, registry.describe())
    return registry


async def run(settings: IngestSettings, packager: Any, started: asyncio.Event | None = None,
              demo: DemoRoom | None = None, registry: Registry | None = None,
              status: StatusDesk | None = None) -> None:
    """Serve ingest until cancelled. Rooms that were live resume at start; on the way out
    they are stopped without ending (the next start resumes them). `status`: the desk the
    origin beside it answers status objects from (its audience board is the origin's); the
    rooms are attached to it here."""
    token = check_settings(settings)
    # aioice logs every candidate pair at INFO: pages of noise per browser connecting.
    logging.getLogger("aioice").setLevel(logging.WARNING)
    metrics = IngestMetrics()
    hold = load_hold_audio(settings.hold_audio, settings.hold_audio_max_seconds)
    policy = RoomPolicy(idle_timeout=settings.idle_timeout_seconds,
                        max_speakers=settings.max_speakers_per_room, hold=hold)
    own_registry = registry is None
    if registry is None:
        registry = await open_registry(settings)
    rooms = Rooms(packager, registry, metrics, policy)
    if status is None:
        status = StatusDesk(registry)
    status.attach(rooms)
    presence = PresenceWriter(rooms, registry, status.audience, settings.presence_seconds)
    try:
        live = await rooms.load()
    except Unavailable as exc:
        if own_registry:
            await registry.close()
        raise ConfigError(str(exc)) from exc
    allow_loopback_candidates(settings.whip_ice_loopback)
    ice = [u.strip() for u in settings.whip_ice_servers.split(",") if u.strip()]
    whip = WhipEndpoint(rooms, metrics, ice, max_sessions=settings.whip_max_sessions,
                        max_per_address=settings.whip_max_sessions_per_address,
                        idle_timeout=settings.whip_idle_seconds)
    rtmp = RtmpServer.from_settings(rooms, metrics, settings)
    try:
        await rtmp.start()
    except OSError as exc:
        raise ConfigError(f"cannot listen for RTMP on {settings.host}:{settings.rtmp_port}"
                          + (f" and RTMPS on {settings.rtmps_port}" if settings.rtmps_port
                             else "") + f": {exc.strerror or exc}") from exc

    def health() -> dict[str, Any]:
        writer = getattr(packager, "writer", None)
        store_error = writer.misconfigured or writer.last_error if writer is not None else None
        return {"rtmp_port": rtmp.port, "rtmps_port": rtmp.tls_port,
                "rtmp_connections": rtmp.connections,
                "store": {"ok": store_error is None, "error": store_error},
                "database": {"ok": rooms.ledger.last_error is None,
                             "error": rooms.ledger.last_error,
                             "pending_writes": rooms.ledger.pending}}

    api_limits = ApiLimits(settings.api_rate_per_second, settings.api_burst,
                           settings.api_max_body_bytes)
    app = build_app(rooms, whip, metrics, token, public_urls(settings), health, api_limits,
                    token_keys=listener_token_keys(settings), status=status)
    server = http_server(app, settings.host, settings.control_port)
    http_started = asyncio.Event()
    http = asyncio.create_task(serve_http(server, http_started))
    demo_task: asyncio.Task[int] | None = None
    try:
        waiter = asyncio.create_task(http_started.wait())
        await asyncio.wait([waiter, http], return_when=asyncio.FIRST_COMPLETED)
        if not http_started.is_set():
            waiter.cancel()
            try:
                http.result()
            except (SystemExit, OSError) as exc:
                raise ConfigError(f"cannot serve the control API on {settings.host}:"
                                  f"{settings.control_port}") from exc
        log.info("ingest: control API http://%s:%d (docs at /docs), RTMP port %d",
                 settings.host, settings.control_port, rtmp.port)
        if settings.node_id:
            urls = public_urls(settings)
            internal_origin = settings.internal_url or urls.origin
            # Other nodes reach this one inside the network (relays, ending its rooms): the
            # host of its internal origin URL with the control port, never a public balancer
            # that may pick any node.
            host = urlsplit(internal_origin).hostname if settings.internal_url else None
            internal_control = (f"http://{host}:{settings.control_port}" if host
                                else urls.control)
            rooms.node = Node(registry, settings.node_id, internal_origin, internal_control,
                              rtmp.port, settings.node_capacity, settings.lease_seconds,
                              metrics)
            rooms.relay_token = token
            await rooms.node.start(rooms)
        await rooms.resume(live)
        presence.start()
        if demo is not None:
            demo_task = await _open_demo(rooms, demo)
        if started is not None:
            started.set()
        # What exists now (the libraries, the apps, the rooms) lives as long as the process:
        # frozen out of the collector's sight, a collection of the oldest generation walks
        # only what came since, not every object of every library imported.
        gc.collect()
        gc.freeze()
        await asyncio.shield(http)
    finally:
        await cancel_and_wait(demo_task)
        await presence.stop()
        await rtmp.stop()
        await whip.close()
        await rooms.close(settings.store_drain_seconds)
        if own_registry:
            await registry.close()
        if not http.done():
            http.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await http
