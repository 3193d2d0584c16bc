"""What each `townsquare` command runs: the services wired together in one event loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from hls.names import epoch_id, new_broadcast_id, room_key
from ingest.capture import play
from ingest.settings import IngestSettings
from ingest.sources import SourceError, TestSignal, open_source
from packager.audience import AudienceBoard
from packager.ladder import GRID_SAMPLES, SAMPLE_RATE
from packager.origin import HubLive, StoreLive, build_app
from packager.pipeline import Packager, plan_epoch
from packager.privacy import RegistryPrivacy
from packager.playlist import target_duration_for
from packager.recording import EpochInfo, repair_broadcast
from packager.roomlist import RoomList
from packager.settings import OriginSettings, PackagerSettings
from packager.status import OnAirFeed, StatusDesk
from packager.store import open_store
from serving.http import http_server, serve_http
from serving.tasks import cancel_and_wait

log = logging.getLogger("townsquare")


def _store_overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = {"data": "data_dir", "s3_bucket": "s3_bucket", "s3_endpoint_url": "s3_endpoint_url",
            "s3_prefix": "s3_prefix"}
    return {f: getattr(args, a) for a, f in keys.items() if getattr(args, a, None) is not None}


def _pick(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


async def _demo(packager: Packager, room: str, stop: asyncio.Event) -> None:
    """The test signal into `room`, carrying on the room's timeline when it is still open
    from an earlier run; a stop suspends it (the next start resumes it)."""
    point = await packager.resume_point(room)
    plan = plan_epoch(point)
    if plan.prior:
        await packager.repair(room, plan.broadcast, plan.prior)
    broadcast = packager.start_broadcast(room, plan)
    try:
        await play(TestSignal(), broadcast.feed, stop)
    finally:
        await broadcast.suspend()


async def _until(stop: asyncio.Event, *tasks: asyncio.Task[Any]) -> None:
    """Wait for `stop` or for any task to fail, whichever comes first."""
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    for t in done:
        if t is not waiter and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]


def spawn_edge(upstream: str, host: str, port: int) -> subprocess.Popen[bytes]:
    """The edge runs in its own process so that it has a core to itself; it dies with this
    process, however this one ends (`kill -9` included), so no orphan keeps its port."""
    return _spawn_child(["edge", "--upstream", upstream, "--host", host, "--port", str(port)])


def _node_port(base: int, i: int) -> int:
    """Node i's own origin, behind the tier: base + 100 + i."""
    return base + 100 + i


def _node_ports(settings: IngestSettings, tier_port: int, i: int) -> tuple[int, int, int]:
    """(control, origin, RTMP) of node i of `up --nodes`: the control API of node 1 plus
    10 × (i − 1), its origin behind the tier, RTMP on 1935 + i − 1."""
    return (settings.control_port + 10 * (i - 1), _node_port(tier_port, i),
            settings.rtmp_port + i - 1)


def _spawn_child(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "townsquare", *argv],
                            env={**os.environ, **(env or {})}, preexec_fn=_die_with_parent)


def _spawn_node(args: argparse.Namespace, settings: IngestSettings, i: int,
                ports: tuple[int, int, int]) -> subprocess.Popen[bytes]:
    control, origin, rtmp = ports
    env = {"TOWNSQUARE_NODE_ID": f"node-{i}",
           "TOWNSQUARE_STORE_SPILL_DIR": str(settings.data_dir / "spill" / f"node-{i}")}
    if settings.public_edge_url:
        env["TOWNSQUARE_PUBLIC_EDGE_URL"] = settings.public_edge_url
    argv = ["ingest", "--host", settings.host, "--control-port", str(control),
            "--origin-port", str(origin), "--rtmp-port", str(rtmp)]
    if settings.rtmps_port:  # RTMPS beside RTMP: rtmps_port + i − 1 on node i
        argv += ["--rtmps-port", str(settings.rtmps_port + i - 1)]
    for flag, attr in (("--data", "data"), ("--s3-bucket", "s3_bucket"),
                       ("--s3-endpoint-url", "s3_endpoint_url"), ("--s3-prefix", "s3_prefix")):
        if getattr(args, attr, None) is not None:
            argv += [flag, str(getattr(args, attr))]
    return _spawn_child(argv, env)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


async def run_origin(args: argparse.Namespace, stop: asyncio.Event) -> None:
    settings = OriginSettings(**_store_overrides(args), **_pick(args, "host", "origin_port"))
    store = open_store(settings)
    packager = None
    demo_stop = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    audience = AudienceBoard()
    status = StatusDesk(audience=audience)
    if args.demo:
        packager = Packager(PackagerSettings(**_store_overrides(args)).beside_origin(), store)
        await packager.start()
        hub = packager.hub
        rooms: Any = HubLive(hub)
        status.attach(OnAirFeed(lambda room: hub.get(room) is not None))
        tasks.append(asyncio.create_task(_demo(packager, args.demo, demo_stop)))
        registry = None
    else:
        rooms = StoreLive(store, settings.origin_poll_seconds)
        registry = await _origin_registry(settings)
    if registry is not None:
        # The rooms database ingest writes: private rooms only under /private/, rooms nobody
        # publishes described from it, and the directory.
        status = StatusDesk(registry, audience)
        app = build_app(store, rooms, RegistryPrivacy(registry), audience, status,
                        RoomList(registry))
    else:
        app = build_app(store, rooms, audience=audience, status=status)
    http = asyncio.create_task(serve_http(http_server(app, settings.host, settings.origin_port)))
    base = f"http://{settings.host}:{settings.origin_port}"
    rooms_db = f", rooms database: {registry.describe()}" if registry is not None else ""
    print(f"origin: {base}  (store: {store.describe()}{rooms_db})", flush=True)
    if args.demo:
        print(f"demo room: {base}/live/{args.demo}/master.m3u8", flush=True)
    else:
        print("live rooms are followed through the state.json their packager writes: "
              "`townsquare ingest --room` writes it, `townsquare ingest` and `up` only with "
              "TOWNSQUARE_PUBLISH_STATE=true; without it a room is served from its stored "
              "playlists, a segment at a time", flush=True)
    try:
        await _until(stop, http, *tasks)
    finally:
        demo_stop.set()
        if packager is not None:
            await packager.close(suspend=True)
        await cancel_and_wait(*tasks, http)
        if registry is not None:
            await registry.close()


async def _origin_registry(settings: OriginSettings) -> Any:
    """The rooms database a standalone origin reads (`registry.Registry`): the configured
    one, or the SQLite file ingest keeps in the data folder when there is one. None without
    either: every room is then public and the directory is empty."""
    from registry import DB_FILE, Registry, RegistryError, default_url

    if settings.database_url is None and not (settings.data_dir / DB_FILE).exists():
        log.warning("no rooms database (TOWNSQUARE_DATABASE_URL, or %s in the data folder): "
                    "every room is served as public and the directory is empty", DB_FILE)
        return None
    url = settings.database_url or default_url(settings.data_dir)
    try:
        return await Registry.open(url, migrate=False)
    except RegistryError as exc:
        raise SystemExit(f"townsquare origin: {exc}") from None


async def run_capture(args: argparse.Namespace, stop: asyncio.Event) -> None:
    settings = PackagerSettings(**_store_overrides(args))
    packager = Packager(settings)
    await packager.start()
    try:
        if args.source == "mic":
            from ingest.sources import open_microphone

            source = open_microphone()
        else:
            source = open_source(args.source, args.seconds)
    except (SourceError, ImportError) as exc:
        raise SystemExit(f"townsquare ingest: {exc}") from exc
    point = await packager.resume_point(args.room)
    broadcast = packager.start_broadcast(
        args.room, plan_epoch(point, new_broadcast_id(time.time())))
    print(f"broadcasting {source.name} into room {args.room} (store: {packager.store.describe()})",
          flush=True)
    local_stop = asyncio.Event()

    async def deadline() -> None:
        if args.seconds:
            await asyncio.sleep(args.seconds)
            local_stop.set()
        await stop.wait()
        local_stop.set()

    timer = asyncio.create_task(deadline())
    try:
        await play(source, broadcast.feed, local_stop)
    finally:
        await broadcast.close()
        await packager.close()
        await cancel_and_wait(timer)
        print(f"broadcast {broadcast.broadcast_id} ended; recording at "
              f"{broadcast.base}/recording.m3u8", flush=True)


async def run_stack(args: argparse.Namespace, stop: asyncio.Event) -> None:
    """`townsquare ingest` (servers) and `townsquare up` (the same plus an edge)."""
    from ingest.service import DemoRoom, open_registry
    from ingest.service import run as run_ingest

    with_edge = args.command == "up" and not args.no_edge
    edge_port = getattr(args, "edge_port", None) or 8080
    nodes = getattr(args, "nodes", None) or 1
    # The origin beside the packager serves its rooms from memory (HubLive).
    settings = IngestSettings(**_store_overrides(args),
                              **_pick(args, "host", "control_port", "origin_port", "rtmp_port",
                                      "rtmps_port")).beside_origin()
    show = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    if with_edge and settings.public_edge_url is None:
        # Rooms hand out listener URLs on the edge, not on the origin.
        settings = settings.model_copy(update={"public_edge_url": f"http://{show}:{edge_port}"})
    tier_port = settings.origin_port
    children: list[subprocess.Popen[bytes]] = []
    if nodes > 1:
        # Node 1 runs here; nodes 2..N are child processes; the origin tier takes the origin
        # port and every node's own origin sits behind it.
        settings = settings.model_copy(update={
            "node_id": "node-1", "origin_port": _node_port(tier_port, 1),
            "store_spill_dir": settings.data_dir / "spill" / "node-1"})
    # One rooms database for ingest and the origin beside it: the origin asks it which rooms
    # are private (they are served under /private/ only).
    registry = await open_registry(settings)
    packager = Packager(settings)
    store = packager.store
    store_problem = await packager.start()
    # The edges' audience reports reach this origin; the status objects it serves count them,
    # and ingest writes them to the registry for the directory.
    audience = AudienceBoard()
    status = StatusDesk(registry, audience)
    # A cluster node's origin is reached through the origin tier (`routed`).
    origin = http_server(build_app(store, HubLive(packager.hub), RegistryPrivacy(registry),
                                   audience, status, RoomList(registry),
                                   routed=settings.node_id is not None),
                         settings.host, settings.origin_port)
    origin_task = asyncio.create_task(serve_http(origin))
    demo_name = getattr(args, "demo", None)
    demo = DemoRoom(demo_name) if demo_name else None
    ingest_started = asyncio.Event()
    ingest_task = asyncio.create_task(run_ingest(settings, packager, ingest_started, demo,
                                                 registry=registry, status=status))
    await _until_started(ingest_started, ingest_task)

    node_lines = []
    if nodes > 1:
        for i in range(2, nodes + 1):
            ports = _node_ports(settings, tier_port, i)
            children.append(_spawn_node(args, settings, i, ports))
            node_lines.append(f"node {i}:       control http://{show}:{ports[0]}, RTMP "
                              f"rtmp://{show}:{ports[2]}/live/{{stream-key}}, origin "
                              f"http://{show}:{ports[1]}")
        children.append(_spawn_child(["tier", "--host", settings.host, "--port", str(tier_port),
                                      "--data", str(settings.data_dir)]))
    upstream_port = tier_port
    edge_proc = None
    if with_edge:
        edge_proc = spawn_edge(f"http://127.0.0.1:{upstream_port}", settings.host, edge_port)

    origin_url = f"http://{show}:{upstream_port}"
    edge_url = f"http://{show}:{edge_port}" if edge_proc else origin_url
    lines = [
        f"store:        {store.describe()}"
        + (f"  -- NOT WRITABLE: {store_problem}" if store_problem else ""),
        f"control API:  http://{show}:{settings.control_port}/docs",
        f"RTMP:         rtmp://{show}:{settings.rtmp_port}/live/{{stream-key}}",
        *([f"RTMPS:        rtmps://{show}:{settings.rtmps_port}/live/{{stream-key}}"]
          if settings.rtmps_port else []),
        f"origin:       {origin_url}" + ("  (the origin tier)" if nodes > 1 else ""),
    ]
    if nodes > 1:
        lines[1:1] = [f"node 1:       control http://{show}:{settings.control_port}, RTMP "
                      f"rtmp://{show}:{settings.rtmp_port}/live/{{stream-key}}, origin "
                      f"http://{show}:{settings.origin_port}", *node_lines]
    if edge_proc:
        lines.append(f"edge:         {edge_url}")
    if args.command == "up":
        lines.append(f"admin token:  {os.environ.get('TOWNSQUARE_ADMIN_TOKEN')}")
    if demo is not None:
        name = demo.name
        lines.append(f"demo room:    {edge_url}/live/{name}/master.m3u8")
        if edge_proc:
            lines.append(f"listen:       {edge_url}/listen/{name}")
        lines.append(f"play it:      ffplay {edge_url}/live/{name}/master.m3u8")
        lines.append(f"join it:      http://{show}:{settings.control_port}/broadcast/{name}"
                     f"  (stream key {demo.key or 'unchanged: the room resumed'})")
    print("\n".join(["townsquare is up", *lines]), flush=True)
    try:
        await _until(stop, origin_task, ingest_task)
    finally:
        # Speakers first (their rooms end cleanly), then the packager drains to the store,
        # then the servers go.
        await cancel_and_wait(ingest_task)
        await packager.close(suspend=True)
        await registry.close()
        if edge_proc is not None:
            edge_proc.send_signal(signal.SIGTERM)
        await cancel_and_wait(origin_task)
        for child in children:
            child.send_signal(signal.SIGTERM)
        for proc in [*children, *([edge_proc] if edge_proc is not None else [])]:
            with contextlib.suppress(Exception):
                proc.wait(15)


async def _until_started(started: asyncio.Event, task: asyncio.Task[None]) -> None:
    """Wait for a service to report it is listening; re-raise its start-up error."""
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED)
    if not started.is_set():
        waiter.cancel()
        task.result()


async def run_repair(args: argparse.Namespace) -> None:
    """`townsquare repair ROOM`: rebuild the recording index of the room's broadcast (or
    `--broadcast B`) from the objects in the store; with `--end`, or when the room has
    ended, close the recording too. Safe to run any number of times."""
    from registry import Registry, RegistryError, default_url

    settings = IngestSettings(**_store_overrides(args))
    store = open_store(settings)
    known: tuple[EpochInfo, ...] = ()
    end = bool(args.end)
    broadcast = args.broadcast
    try:
        registry = await Registry.open(settings.database_url or default_url(settings.data_dir))
    except RegistryError as exc:
        if broadcast is None:
            raise SystemExit(f"townsquare repair: {exc}; name the broadcast with --broadcast")
        log.warning("repairing from the store alone: %s", exc)
    else:
        try:
            room = await registry.get_room(args.room)
            if broadcast is None:
                if room is None or room.broadcast_id is None:
                    raise SystemExit(f"townsquare repair: room {args.room} has no broadcast")
                broadcast = room.broadcast_id
            end = end or (room is not None and room.state == "ended"
                          and room.broadcast_id == broadcast)
            known = tuple(EpochInfo(epoch_id(e.epoch, e.broadcast_id), e.started_at, e.first_msn)
                          for e in await registry.epochs(args.room, broadcast))
        finally:
            await registry.close()
    renditions = [r.name for r in settings.renditions()]
    td = target_duration_for(settings.segment_units * GRID_SAMPLES / SAMPLE_RATE)
    report = await repair_broadcast(store, args.room, broadcast, renditions, td,
                                    settings.segment_units * GRID_SAMPLES, known, end)
    print(f"room {args.room}, broadcast {report.broadcast}: {report.epochs} epochs, "
          f"{report.entries_added} index entries rebuilt from the store, "
          f"{'ended' if report.ended else 'still open'}; recording at "
          f"{room_key(args.room, report.broadcast, 'recording.m3u8')}", flush=True)


async def run_tier(args: argparse.Namespace, stop: asyncio.Event) -> None:
    """`townsquare tier`: a stateless origin replica in front of the ingest nodes' origins,
    finding each room's owner in the rooms database."""
    from packager.tier import TierSettings, build_tier_app
    from registry import Registry, RegistryError, default_url

    settings = TierSettings(**_store_overrides(args), **_pick(args, "host", "origin_port"))
    url = settings.database_url or default_url(settings.data_dir)
    if settings.database_url is None:
        log.warning("no TOWNSQUARE_DATABASE_URL: owners are looked up in %s, which only this "
                    "machine can share", url)
    try:
        registry = await Registry.open(url, migrate=False)
    except RegistryError as exc:
        raise SystemExit(f"townsquare tier: {exc}") from None
    store = open_store(settings)
    app = build_tier_app(store, registry, settings)
    http = asyncio.create_task(serve_http(http_server(app, settings.host, settings.origin_port)))
    print(f"origin tier: http://{settings.host}:{settings.origin_port}  (store: "
          f"{store.describe()}, rooms database: {registry.describe()})", flush=True)
    try:
        await _until(stop, http)
    finally:
        await cancel_and_wait(http)
        await app.state.tier.aclose()
        await registry.close()
