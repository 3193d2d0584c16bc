"""The origin tier in front of real owners (`townsquare origin --demo` processes), with the
rooms database on SQLite (PostgreSQL for the outage): live requests go to the room's owner,
immutable objects come from the store, a failover is followed without a restart, and what the
tier can refuse on its own never reaches the store, the database or an owner."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hls.http import IMMUTABLE, SHORT
from packager.origin import HubLive, build_app
from packager.pipeline import Packager
from packager.settings import PackagerSettings
from packager.store import LocalStore
from packager.tier import TierSettings, build_tier_app
from registry import Lease, NodeInfo, Registry, RegistryError, default_url
from tests.support.audio import program_tone
from tests.support.postgres import PostgresNotInstalled, PostgresServer
from tests.support.procs import Service, free_port, running
from tests.support.serve import serving

ROOM = "plaza"
HINT = re.compile(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="((e\d+-[0-9a-f]{6})/p(\d+)\.(\d+)\.m4s)"')
Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Origin:
    data: Path
    url: str
    service: Service


@contextmanager
def _origin(room: str, data: Path, port: int, log: Path) -> Iterator[Service]:
    """An owner: `origin --demo room`, returned once the room is on air there."""
    base = f"http://127.0.0.1:{port}"
    with running(["origin", "--demo", room, "--port", str(port), "--data", str(data)], log,
                 f"{base}/healthz") as svc:
        deadline = time.monotonic() + 20
        while (httpx.get(f"{base}/live/{room}/master.m3u8").status_code != 200
               or not HINT.search(httpx.get(f"{base}/live/{room}/aac96/live.m3u8").text)):
            assert time.monotonic() < deadline, f"{room} not on air: {svc.output()[-2000:]}"
            time.sleep(0.1)
        yield svc


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    """One owner broadcasting ROOM for the tests that do not kill it."""
    tmp = tmp_path_factory.mktemp("owner")
    port = free_port()
    with _origin(ROOM, tmp / "data", port, tmp / "origin.log") as svc:
        yield Origin(tmp / "data", f"http://127.0.0.1:{port}", svc)


async def _own(registry: Registry, room: str, nodes: dict[str, str], node: str,
               ttl: float = 600.0) -> Lease:
    """`room` live, the nodes in the directory, `node` holding the room's lease."""
    now = time.time()
    for name, url in nodes.items():
        await registry.register_node(NodeInfo(name, url, "http://127.0.0.1:9", 1935, 0, 0.0, 50,
                                              now))
    await registry.create_room(room, "0" * 64, now)
    await registry.go_live(room, "b20260101T000000Z-abcdef", now)
    lease = await registry.take_room(room, node, ttl)
    assert lease is not None
    return lease


@asynccontextmanager
async def serving_tier(data: Path, registry: Registry, **settings: Any) -> AsyncIterator[str]:
    store = LocalStore(data)
    app = build_tier_app(store, registry, TierSettings(data_dir=data, **settings))
    try:
        async with serving(app) as base:
            yield base
    finally:
        await app.state.tier.aclose()
        store.close()


async def _metrics(client: httpx.AsyncClient, base: str) -> Metrics:
    text = (await client.get(f"{base}/metrics")).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("townsquare_tier_")}


def _count(m: Metrics, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in m.items()
               if n == name and all((k, w) in ls for k, w in labels.items()))


def _delta(before: Metrics, after: Metrics, name: str, **labels: str) -> float:
    return _count(after, name, **labels) - _count(before, name, **labels)


async def _playlist_with_hint(client: httpx.AsyncClient, url: str,
                              timeout: float = 20.0) -> tuple[str, re.Match[str]]:
    deadline = time.monotonic() + timeout
    while True:
        r = await client.get(url)
        if r.status_code == 200 and (hint := HINT.search(r.text)) and "#EXT-X-PART:" in r.text:
            return r.text, hint
        assert time.monotonic() < deadline, f"no live playlist at {url}: {r.status_code} {r.text}"
        await asyncio.sleep(0.2)


async def test_live_room_goes_through_its_owner_and_media_come_from_the_store(
    owner: Origin, tmp_path: Path
) -> None:
    registry = await Registry.open(default_url(tmp_path / "db"))
    try:
        await _own(registry, ROOM, {"a": owner.url}, "a")
        async with serving_tier(owner.data, registry) as base, httpx.AsyncClient(timeout=20) as c:
            live = f"{base}/live/{ROOM}/aac96/live.m3u8"
            master = await c.get(f"{base}/live/{ROOM}/master.m3u8")
            assert master.status_code == 200 and "aac96/live.m3u8" in master.text
            assert master.headers["content-type"] == "application/vnd.apple.mpegurl"
            text, hint = await _playlist_with_hint(c, live)
            assert text.startswith("#EXTM3U")

            # The next part, asked for before it exists: answered once it does, containing it.
            # (On a slow machine the part may exist by the time the request arrives; that
            # answer is a satisfied one, max-age=0: ask again for a newer hint.)
            for _ in range(5):
                before = await _metrics(c, base)
                uri, msn, part = hint[1], hint[3], hint[4]
                r = await c.get(live, params={"_HLS_msn": msn, "_HLS_part": part, "utm": "x"})
                if r.headers.get("cache-control") != "public, max-age=0":
                    break
                text, hint = await _playlist_with_hint(c, live)
            assert r.status_code == 200
            assert re.search(rf'^#EXT-X-PART:DURATION=[0-9.]+,URI="{uri}"', r.text, re.MULTILINE)
            assert r.headers["cache-control"] == "public, max-age=12"  # 6 × TD, the owner's

            # The part hinted now does not exist yet: the store misses, the owner holds it.
            following = HINT.search(r.text)
            assert following is not None
            held = await c.get(f"{base}/live/{ROOM}/aac96/{following[1]}")
            after = await _metrics(c, base)
            assert held.status_code == 200 and held.headers["content-type"] == "audio/mp4"
            assert held.content and held.headers["cache-control"] == IMMUTABLE
            assert _delta(before, after, "townsquare_tier_forwards_total", outcome="answered") == 2
            assert _delta(before, after, "townsquare_tier_store_reads_total", outcome="miss") == 1

            # Init and a whole segment: from the store, the owner is not asked.
            epoch = hint[2]
            segment = re.search(rf"^({epoch}/s\d+\.m4s)$", text, re.MULTILINE)
            assert segment is not None, text
            before = await _metrics(c, base)
            for name in (f"{epoch}/init.mp4", segment[1]):
                r = await c.get(f"{base}/live/{ROOM}/aac96/{name}")
                assert r.status_code == 200 and r.headers["cache-control"] == IMMUTABLE
                assert r.headers["content-type"] == "audio/mp4" and len(r.content) > 100
            head = await c.head(f"{base}/live/{ROOM}/aac96/{segment[1]}")
            assert head.status_code == 200 and int(head.headers["content-length"]) > 100
            after = await _metrics(c, base)
            assert _delta(before, after, "townsquare_tier_store_reads_total", outcome="hit") == 3
            assert _delta(before, after, "townsquare_tier_forwards_total") == 0

            # The recording so far, composed from the store.
            broadcast = next(p.name for p in (owner.data / "live" / ROOM).iterdir()
                             if p.name.startswith("b"))
            rec = await c.get(f"{base}/live/{ROOM}/{broadcast}/aac96/recording.m3u8")
            assert rec.status_code == 200 and "#EXTINF" in rec.text
            assert _count(after, "townsquare_tier_requests_total", kind="segment",
                          status="200") >= 1
    finally:
        await registry.close()


async def test_concurrent_requests_for_a_room_share_one_owner_lookup_per_cache_period(
    owner: Origin, tmp_path: Path
) -> None:
    registry = await Registry.open(default_url(tmp_path / "db"))
    try:
        await _own(registry, ROOM, {"a": owner.url}, "a")
        async with serving_tier(owner.data, registry, tier_owner_cache_seconds=1.0) as base:
            limits = httpx.Limits(max_connections=100)
            async with httpx.AsyncClient(timeout=20, limits=limits) as c:
                url = f"{base}/live/{ROOM}/opus64/live.m3u8"
                before = await _metrics(c, base)
                rs = await asyncio.gather(*(c.get(url) for _ in range(50)))
                assert {r.status_code for r in rs} == {200}
                first = await _metrics(c, base)
                assert _delta(before, first, "townsquare_tier_owner_lookups_total") == 1
                assert _delta(before, first, "townsquare_tier_forwards_total",
                              outcome="answered") == 50
                assert _count(first, "townsquare_tier_owner_cache_rooms") == 1

                started = time.monotonic()
                while time.monotonic() - started < 2.5:
                    rs = await asyncio.gather(*(c.get(url) for _ in range(50)))
                    assert {r.status_code for r in rs} == {200}
                elapsed = time.monotonic() - started
                after = await _metrics(c, base)
                lookups = _delta(first, after, "townsquare_tier_owner_lookups_total")
                assert 1 <= lookups <= elapsed / 1.0 + 1
    finally:
        await registry.close()


async def test_paths_outside_the_grammar_and_bad_directives_stop_at_the_tier(
    owner: Origin, tmp_path: Path
) -> None:
    registry = await Registry.open(default_url(tmp_path / "db"))
    try:
        await _own(registry, ROOM, {"a": owner.url}, "a")
        async with serving_tier(owner.data, registry) as base, httpx.AsyncClient(timeout=10) as c:
            before = await _metrics(c, base)
            for path in (f"{ROOM}/room.json", f"{ROOM}/state.json",
                         f"{ROOM}/b20260101T000000Z-abcdef/epochs.json",
                         f"{ROOM}/aac96/e1-abcdef/i0.m3u8", f"{ROOM}/aac96/e1-abcdef/x.m4s",
                         "Not_A_Room/master.m3u8", f"{ROOM}/aac96/live.m3u8/extra", ""):
                r = await c.get(f"{base}/live/{path}")
                assert r.status_code == 404, path
            for query in ("_HLS_part=1", "_HLS_msn=abc", "_HLS_msn=1&_HLS_skip=NO",
                          "_HLS_msn=1&_HLS_msn=2", "_HLS_msn=99999999999999999999"):
                r = await c.get(f"{base}/live/{ROOM}/aac96/live.m3u8?{query}")
                assert r.status_code == 400, query
                assert r.headers["content-type"].startswith("text/plain")
            after = await _metrics(c, base)
            for name in ("townsquare_tier_owner_lookups_total", "townsquare_tier_forwards_total",
                         "townsquare_tier_store_reads_total"):
                assert _delta(before, after, name) == 0, name
            assert _delta(before, after, "townsquare_tier_requests_total", kind="other",
                          status="404") >= 7
            assert (await c.get(f"{base}/healthz")).status_code == 200
    finally:
        await registry.close()


@dataclass
class Attempt:
    status: int
    seconds: float
    text: str


async def test_tier_follows_a_room_to_its_new_owner_without_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port_a, port_b = free_port(), free_port()
    url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    failover_wait = 4.0
    registry = await Registry.open(default_url(tmp_path / "db"))
    owners = ExitStack()  # entered and left on a thread: the tier shares this loop
    try:
        lease = await _own(registry, ROOM, {"a": url_a, "b": url_b}, "a")
        a = await asyncio.to_thread(owners.enter_context,
                                    _origin(ROOM, data, port_a, tmp_path / "a.log"))
        try:
            async with serving_tier(data, registry, tier_failover_wait_seconds=failover_wait) \
                    as base, httpx.AsyncClient(timeout=30) as c:
                live = f"{base}/live/{ROOM}/aac96/live.m3u8"
                _, hint = await _playlist_with_hint(c, live)
                epoch_a = hint[2]
                attempts: list[Attempt] = []
                stop = asyncio.Event()

                async def listener() -> None:
                    """A player's loop: always ask for the part after the last one it saw."""
                    current = hint
                    while not stop.is_set():
                        started = time.monotonic()
                        r = await c.get(live, params={"_HLS_msn": current[3],
                                                      "_HLS_part": current[4]})
                        attempts.append(Attempt(r.status_code, time.monotonic() - started,
                                                r.text))
                        found = HINT.search(r.text) if r.status_code == 200 else None
                        if found is None:
                            await asyncio.sleep(0.2)
                            plain = await c.get(live)
                            found = HINT.search(plain.text) if plain.status_code == 200 else None
                        current = found or current

                listeners = [asyncio.create_task(listener()) for _ in range(3)]
                await asyncio.sleep(1.0)
                assert attempts and all(x.status == 200 for x in attempts)

                a.signal(signal.SIGKILL)  # the owner's process group, started by this test
                await asyncio.to_thread(a.proc.wait, 10)
                # A second with nobody owning the room, then one with an owner not up yet.
                assert await registry.release_room(ROOM, "a", lease.epoch)
                await asyncio.sleep(1.0)
                # Between owners, a plain playlist is the store's copy, short-lived.
                plain = await c.get(live)
                assert plain.status_code == 200 and plain.text.startswith("#EXTM3U")
                assert plain.headers["cache-control"] == SHORT
                assert await registry.take_room(ROOM, "b", 600) is not None
                await asyncio.sleep(1.0)
                assert (await c.get(live)).status_code == 200

                await asyncio.to_thread(owners.enter_context,
                                        _origin(ROOM, data, port_b, tmp_path / "b.log"))
                b_up = time.monotonic()
                while True:
                    r = await c.get(live)
                    found = HINT.search(r.text) if r.status_code == 200 else None
                    if found is not None and found[2] != epoch_a:
                        break
                    assert time.monotonic() - b_up < 5, "the tier did not follow the new owner"
                    await asyncio.sleep(0.1)
                epoch_b = found[2]
                r = await c.get(live, params={"_HLS_msn": found[3], "_HLS_part": found[4]})
                assert r.status_code == 200 and f'URI="{found[1]}"' in r.text

                await asyncio.sleep(2.0)
                stop.set()
                await asyncio.wait_for(asyncio.gather(*listeners), 30)
                after = await _metrics(c, base)
        finally:
            await asyncio.to_thread(owners.close)
    finally:
        await registry.close()

    assert {x.status for x in attempts} <= {200, 503}, [(x.status, x.text) for x in attempts]
    # Every blocking request got an answer; the ones the tier gave up on within the bound.
    assert max(x.seconds for x in attempts) < 12
    for x in attempts:
        if "changing owner" in x.text:
            assert x.seconds <= failover_wait + 1.0
    assert any(x.seconds >= 1.5 for x in attempts), "requests were held through the switch"
    assert any(x.status == 200 and epoch_b in x.text for x in attempts), "listeners moved on"
    assert _count(after, "townsquare_tier_forwards_total", outcome="unreachable") >= 1


async def test_a_request_held_by_an_owner_that_hands_the_room_over_is_answered_by_the_next(
        tmp_path: Path) -> None:
    """Owner a stops its epoch (a node leaving the cluster) while the tier's request waits
    there: a's origin answers ELSEWHERE at once, and the tier carries the request to b, the
    room's owner once a's lease is released, within the failover wait."""
    data = tmp_path / "data"
    registry = await Registry.open(default_url(tmp_path / "db"))
    a, b = Packager(PackagerSettings(data_dir=data)), Packager(PackagerSettings(data_dir=data))
    try:
        async with serving(build_app(a.store, HubLive(a.hub), routed=True)) as url_a, \
                serving(build_app(b.store, HubLive(b.hub), routed=True)) as url_b:
            lease = await _own(registry, ROOM, {"a": url_a, "b": url_b}, "a")
            async with serving_tier(data, registry, tier_failover_wait_seconds=6.0) as base, \
                    httpx.AsyncClient(timeout=30) as c:
                on_a = a.start_broadcast(ROOM)
                on_a.feed(program_tone(0.6))
                live = f"{base}/live/{ROOM}/aac96/live.m3u8"
                held = asyncio.create_task(c.get(live, params={"_HLS_msn": 1, "_HLS_part": 5}))
                await asyncio.sleep(0.5)
                assert not held.done(), "held at a while its epoch is on air"
                before = await _metrics(c, base)
                await on_a.suspend()
                await asyncio.sleep(0.3)  # the hand-over: a's store writes, then its lease
                assert await registry.release_room(ROOM, "a", lease.epoch)
                assert await registry.take_room(ROOM, "b", 600) is not None
                on_b = b.start_broadcast(ROOM)
                on_b.feed(program_tone(1.5))
                r = await held
                after = await _metrics(c, base)
                assert r.status_code == 200, r.text
                assert f'URI="{on_b.epoch.id}/p1.5.m4s"' in r.text, "answered from b's epoch"
                # At least once: asked again before a's lease is released, a says so again.
                assert _delta(before, after, "townsquare_tier_forwards_total",
                              outcome="moved") >= 1
                assert _delta(before, after, "townsquare_tier_forwards_total",
                              outcome="failed") == 0
    finally:
        await asyncio.gather(a.close(), b.close())
        await registry.close()


async def test_rooms_database_away_refuses_live_requests_and_serves_the_store(
    owner: Origin, tmp_path: Path
) -> None:
    try:
        pg = PostgresServer()
    except PostgresNotInstalled as exc:
        pytest.skip(str(exc))
    ttl = 8.0
    await asyncio.to_thread(pg.__enter__)
    try:
        registry = await Registry.open(pg.url, connect_timeout=1.0, command_timeout=1.0)
    except BaseException:
        await asyncio.to_thread(pg.__exit__, None, None, None)
        raise
    try:
        lease = await _own(registry, ROOM, {"a": owner.url}, "a", ttl=ttl)
        async with serving_tier(owner.data, registry) as base, httpx.AsyncClient(timeout=20) as c:
            live = f"{base}/live/{ROOM}/aac96/live.m3u8"
            text, hint = await _playlist_with_hint(c, live)
            segment = re.search(rf"^({hint[2]}/s\d+\.m4s)$", text, re.MULTILINE)
            assert segment is not None

            await asyncio.to_thread(pg.stop)
            # A room whose owner was never looked up cannot be answered live.
            for url, params in ((f"{base}/live/other/aac96/live.m3u8", {}),
                                (f"{base}/live/other/aac96/live.m3u8", {"_HLS_msn": "5"}),
                                (f"{base}/live/other/master.m3u8", {})):
                started = time.monotonic()
                r = await c.get(url, params=params)
                assert r.status_code == 503 and "rooms database" in r.text, r.text
                assert r.headers["cache-control"] == SHORT
                assert time.monotonic() - started < 5
            # The known owner's lease cannot have passed to anyone: it is still asked.
            if time.time() < lease.expires - 1:
                assert (await c.get(live)).status_code == 200

            # Once that lease has run out, the room is refused too; the store still serves.
            await asyncio.sleep(max(0.0, lease.expires - time.time()) + 0.5)
            r = await c.get(live)
            assert r.status_code == 503 and "rooms database" in r.text
            for name in (f"{hint[2]}/init.mp4", segment[1]):
                r = await c.get(f"{base}/live/{ROOM}/aac96/{name}")
                assert r.status_code == 200 and r.headers["cache-control"] == IMMUTABLE
            after = await _metrics(c, base)
            assert _count(after, "townsquare_tier_owner_lookups_total", outcome="error") >= 1
    finally:
        with suppress(RegistryError):
            await registry.close()
        await asyncio.to_thread(pg.__exit__, None, None, None)
