"""Edge drills: floods cost the origin nothing, slow readers and a stalled room hurt nobody else,
and a listener whose edge is killed resumes on another one.

Real processes throughout: an origin with a demo broadcast (`townsquare origin --demo`), edges
in front of it, listeners that follow a rendition the way an LL-HLS player does (blocking
reload for the hinted part, then the part). A reference listener follows the same rendition on
the origin itself; a part's delay is the time from the origin releasing it to the listener on
the edge holding its bytes, so it measures what the edge adds, not the encoder.

Each drill prints its figures (`pytest -s` shows them) for docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httptools
import httpx
import pytest

from tests.edge.conftest import counters, media_folder, media_path, wait_live
from tests.edge.rawhttp import Connection, request_bytes
from tests.edge.roomproxy import RoomProxy
from tests.support.procs import Service, free_port, running

pytestmark = [pytest.mark.slow, pytest.mark.serial]

ROOM = "floods"
OTHER = "floods-b"
TD = 2.0  # the demo broadcast's target duration
BATCH = 64  # flood requests pipelined at once on one connection
_HINT = re.compile(rb'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="([^"]+/)?p(\d+)\.(\d+)\.m4s"')


class Origin:
    """An origin process broadcasting a demo room."""

    def __init__(self, port: int) -> None:
        self.port, self.url = port, f"http://127.0.0.1:{port}"


@contextmanager
def demo_origin(tmp: Path, room: str) -> Iterator[Origin]:
    port = free_port()
    with running(["origin", "--demo", room, "--port", str(port), "--data", str(tmp / room)],
                 tmp / f"origin-{room}.log", f"http://127.0.0.1:{port}/healthz"):
        o = Origin(port)
        wait_live(o.url, room)
        yield o


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    with demo_origin(tmp_path_factory.mktemp("floods"), ROOM) as o:
        yield o


@pytest.fixture
def start_edge(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Edges as processes of this test (port given), stopped at the end."""
    stack: list[AbstractContextManager[Service]] = []

    def make(upstream: str, port: int, env: dict[str, str] | None = None) -> Service:
        cm = running(["edge", "--upstream", upstream, "--port", str(port)],
                     tmp_path / f"edge-{port}.log", f"http://127.0.0.1:{port}/healthz", env=env)
        stack.append(cm)
        return cm.__enter__()

    yield make
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


# -- listeners --------------------------------------------------------------------------------

class Follower:
    """Follows one media playlist: blocking reload for the hinted part, then that part.

    `announced` holds when each part's playlist came back, `received` when its bytes did. With
    several ports it moves to the next one whenever a connection fails (a player's retry on
    another edge)."""

    def __init__(self, ports: list[int], playlist: str) -> None:
        self.ports = ports
        self.playlist = playlist
        self.folder = playlist.rsplit("/", 1)[0]
        self.announced: dict[tuple[int, int], float] = {}
        self.received: dict[tuple[int, int], float] = {}
        self.statuses: Counter[int] = Counter()
        self.failures: list[float] = []
        self.parts: list[str] = []  # part targets fetched so far (cached at the edge)

    async def run(self) -> None:
        which = 0
        conn: Connection | None = None
        hint: tuple[int, int, str] | None = None
        while True:
            try:
                if conn is None:
                    conn = await Connection.open(self.ports[which])
                if hint is None:
                    r = await conn.get(self.playlist)
                    hint = _hint(r.body)
                    continue
                msn, part, uri = hint
                r = await conn.get(f"{self.playlist}?_HLS_msn={msn}&_HLS_part={part}", timeout=20)
                self.statuses[r.status] += 1
                if r.status != 200:
                    await asyncio.sleep(0.2)
                    continue
                self.announced.setdefault((msn, part), time.monotonic())
                target = f"{self.folder}/{uri}"
                p = await conn.get(target, timeout=20)
                self.statuses[p.status] += 1
                if p.status == 200 and p.body:
                    self.received.setdefault((msn, part), time.monotonic())
                    self.parts.append(target)
                hint = _hint(r.body)
            except (OSError, ConnectionError, TimeoutError):
                self.failures.append(time.monotonic())
                if conn is not None:
                    await conn.close()
                conn = None
                which = (which + 1) % len(self.ports)
                await asyncio.sleep(0.05)


def _hint(body: bytes) -> tuple[int, int, str]:
    m = _HINT.search(body)
    assert m, body[:400]
    folder = (m[1] or b"").decode()
    return int(m[2]), int(m[3]), f"{folder}p{int(m[2])}.{int(m[3])}.m4s"


def delays(reference: Follower, listener: Follower, start: float, end: float) -> list[float]:
    """Per part: from the origin releasing it to the listener holding its bytes."""
    return sorted(t - reference.announced[k] for k, t in listener.received.items()
                  if k in reference.announced and start <= t < end)


def playlists(base: str, room: str) -> list[str]:
    """Every rendition's live playlist, from the master playlist."""
    text = httpx.get(f"{base}/live/{room}/master.m3u8", timeout=5).text
    return [f"/live/{room}/{line}" for line in text.splitlines() if line.endswith("live.m3u8")]


class Audience:
    """`per` listeners on each rendition of a room, and a reference on the origin for each."""

    def __init__(self, origin: Origin, ports: list[int], room: str, per: int = 2) -> None:
        lists = playlists(origin.url, room)
        self.refs = {pl: Follower([origin.port], pl) for pl in lists}
        self.listeners = [(pl, Follower(ports, pl)) for pl in lists for _ in range(per)]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        followers = [*self.refs.values(), *(f for _, f in self.listeners)]
        self._tasks = [asyncio.create_task(f.run()) for f in followers]

    def stop(self) -> None:
        for t in self._tasks:
            t.cancel()

    def delays(self, start: float, end: float) -> list[float]:
        return sorted(d for pl, f in self.listeners
                      for d in delays(self.refs[pl], f, start, end))

    def parts(self) -> list[str]:
        return [p for _, f in self.listeners for p in f.parts[-10:]]

    def newest_msn(self) -> int:
        return max(k[0] for _, f in self.listeners[:1] for k in f.received)

    def statuses(self) -> Counter[int]:
        """Answers the listeners had, by status."""
        return sum((f.statuses for _, f in self.listeners), Counter())

    def troubles(self) -> list[str]:
        """Failed connections or answers other than 200 seen by any listener."""
        return [f"{pl}: {f.statuses} {len(f.failures)} failures" for pl, f in self.listeners
                if f.failures or set(f.statuses) != {200}]


def p99(values: list[float]) -> float:
    assert values, "no parts arrived in the window"
    return values[min(len(values) - 1, int(0.99 * len(values)))]


def upstream_total(base: str, statuses: tuple[str, ...] | None = None) -> float:
    return sum(n for (_kind, status), n in
               counters(base, "townsquare_origin_requests_total").items()
               if statuses is None or status in statuses)


# -- (1) a flood of random paths and query strings ---------------------------------------------

def _flood_targets(rng: random.Random, known: list[str], folder: str, msn: int) -> list[str]:
    out = []
    for _ in range(BATCH):
        roll = rng.random()
        if roll < 0.4:  # known objects with random query strings (and stray directives)
            junk = f"cb={rng.random()}&{rng.getrandbits(30):x}={rng.getrandbits(20)}"
            if rng.random() < 0.2:
                junk += f"&_hls_msn={rng.randint(0, 9)}"
            out.append(f"{rng.choice(known)}?{junk}")
        elif roll < 0.8:  # paths that name nothing
            junk = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-._%/")
                           for _ in range(rng.randint(1, 40)))
            out.append(rng.choice([f"/live/{ROOM}/", "/live/", f"{folder}/"]) + junk)
        elif roll < 0.9:  # well formed, but no segment holds such a part
            out.append(f"{folder}/p{msn - rng.randint(0, 3)}.{rng.randint(50, 9999)}.m4s")
        else:  # well formed, far beyond the live edge of the current epoch
            out.append(f"{folder}/s{msn + rng.randint(100, 10**9)}.m4s")
    return out


class _Answers:
    count = 0

    def on_message_complete(self) -> None:
        self.count += 1


def _flood(port: int, known: list[str], folder: str, msn: int, seconds: float,
           out: multiprocessing.Queue[int]) -> None:
    """Pipelined batches of junk on 8 connections, as fast as the edge answers them."""

    async def one(seed: int, until: float) -> int:
        rng = random.Random(seed)
        # Made beforehand, so that the flood's own CPU goes to sending, not to inventing junk.
        batches = [b"".join(request_bytes(t) for t in _flood_targets(rng, known, folder, msn))
                   for _ in range(200)]
        answered = _Answers()
        parser = httptools.HttpResponseParser(answered)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = 0
        while time.monotonic() < until:
            expected = answered.count + BATCH
            writer.write(batches[i % len(batches)])
            i += 1
            while answered.count < expected:
                data = await reader.read(65536)
                if not data:
                    return answered.count
                parser.feed_data(data)
        writer.close()
        return answered.count

    async def main() -> int:
        until = time.monotonic() + seconds
        return sum(await asyncio.gather(*(one(i, until) for i in range(8))))

    out.put(asyncio.run(main()))


def test_flood_of_random_paths_costs_the_origin_nothing(
        origin: Origin, start_edge: Callable[..., Service]) -> None:
    port = free_port()
    start_edge(origin.url, port)
    playlist = media_path(origin.url, ROOM)
    folder = media_folder(origin.url, playlist)

    async def drill() -> dict[str, float]:
        audience = Audience(origin, [port], ROOM)
        audience.start()
        await asyncio.sleep(2)  # the listener is on its way; its parts are cached
        base0, bad0, t0 = upstream_total(origin.url), upstream_total(origin.url, ("404", "400")), \
            time.monotonic()
        await asyncio.sleep(5)
        base1, bad1, t1 = upstream_total(origin.url), upstream_total(origin.url, ("404", "400")), \
            time.monotonic()
        # Immutable objects the edge holds (a playlist's own lifetime would add its refreshes,
        # one a second at most, whatever the flood's size).
        known = [f"{folder}/init.mp4", *audience.parts()]
        msn = audience.newest_msn()
        ctx = multiprocessing.get_context("spawn")
        q: multiprocessing.Queue[int] = ctx.Queue()
        flood = ctx.Process(target=_flood, args=(port, known, folder, msn, 10.0, q))
        flood.start()
        sent = await asyncio.to_thread(q.get, True, 60)
        t2 = time.monotonic()
        await asyncio.to_thread(flood.join, 10)
        base2, bad2 = upstream_total(origin.url), upstream_total(origin.url, ("404", "400"))
        audience.stop()
        assert not audience.troubles(), audience.troubles()
        flood_seconds = 10.0
        return {
            "sent": sent, "rate": sent / flood_seconds,
            "before": (base1 - base0) / (t1 - t0), "during": (base2 - base1) / (t2 - t1),
            "bad_before": bad1 - bad0, "bad_during": bad2 - bad1,
            "p99_before": p99(audience.delays(t0, t1)),
            "p99_during": p99(audience.delays(t2 - flood_seconds, t2)),
        }

    f = asyncio.run(drill())
    print(f"\nflood: {f['sent']:.0f} junk requests in 10 s ({f['rate']:.0f}/s); origin requests "
          f"{f['before']:.1f}/s before, {f['during']:.1f}/s during (404/400: "
          f"{f['bad_before']:.0f} before, {f['bad_during']:.0f} during); part delay p99 "
          f"{f['p99_before'] * 1000:.0f} ms before, {f['p99_during'] * 1000:.0f} ms during")
    assert f["sent"] > 10_000
    assert f["bad_during"] == 0, "junk reached the origin"
    assert f["during"] <= f["before"] * 1.15 + 0.5, "the flood added upstream requests"
    assert f["p99_during"] < 1.0


# -- (2) slow readers and slow senders --------------------------------------------------------

async def _slow_clients(port: int, targets: list[str], readers: int, senders: int,
                        seconds: float) -> dict[str, int]:
    """`readers` connections that pipeline requests for big objects then read 1 byte/s;
    `senders` that send their request headers 1 byte/s."""
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    request = b"".join(request_bytes(t) for t in targets)
    for _ in range(readers):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        s.setblocking(False)
        await loop.sock_connect(s, ("127.0.0.1", port))
        await loop.sock_sendall(s, request)
        socks.append(s)
    trickle: list[tuple[socket.socket, bytes]] = []
    for _ in range(senders):
        s = socket.socket()
        s.setblocking(False)
        await loop.sock_connect(s, ("127.0.0.1", port))
        trickle.append((s, request_bytes(targets[0])))
    got, cut = 0, 0
    for second in range(int(seconds)):
        for s in socks:
            try:
                got += len(s.recv(1))
            except BlockingIOError:
                pass
            except OSError:
                cut += 1
        for s, data in trickle:
            if second < len(data):
                try:
                    s.send(data[second:second + 1])
                except OSError:
                    cut += 1
        await asyncio.sleep(1)
    for s in socks + [s for s, _ in trickle]:
        s.close()
    return {"bytes_read": got, "cut": cut}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError("no VmRSS")


def test_slow_readers_do_not_slow_other_listeners(
        origin: Origin, start_edge: Callable[..., Service]) -> None:
    port = free_port()
    edge = start_edge(origin.url, port)
    playlist = media_path(origin.url, ROOM)
    text = httpx.get(origin.url + playlist).text
    rendition = playlist.rsplit("/", 1)[0]
    segments = [f"{rendition}/{line}" for line in text.splitlines()
                if line.endswith(".m4s") and not line.startswith("#")][-2:]
    assert segments
    for s in segments:  # cached, so every slow reader gets bytes at once
        assert httpx.get(f"http://127.0.0.1:{port}{s}").status_code == 200

    async def drill() -> dict[str, float]:
        audience = Audience(origin, [port], ROOM)
        audience.start()
        await asyncio.sleep(1.5)
        t0 = time.monotonic()
        await asyncio.sleep(4)
        t1 = time.monotonic()
        rss0 = _rss_kib(edge.proc.pid)
        slow = await _slow_clients(port, segments * 16, readers=200, senders=100, seconds=8)
        t2 = time.monotonic()
        rss1 = _rss_kib(edge.proc.pid)
        audience.stop()
        assert not audience.troubles(), audience.troubles()
        return {"p99_before": p99(audience.delays(t0, t1)),
                "p99_during": p99(audience.delays(t1 + 1, t2)),
                "rss_growth_kib": rss1 - rss0, **slow}

    f = asyncio.run(drill())
    print(f"\nslow clients: 200 readers at 1 byte/s (32 pipelined segments each) and 100 "
          f"senders at 1 byte/s for 8 s; part delay p99 {f['p99_before'] * 1000:.0f} ms before, "
          f"{f['p99_during'] * 1000:.0f} ms during; edge RSS +{f['rss_growth_kib']:.0f} KiB")
    assert f["p99_during"] < 1.0
    # Pending answers wait as references to cached bytes, not as copies per connection.
    assert f["rss_growth_kib"] < 64 * 1024


# -- (3) one room's upstream stalls -----------------------------------------------------------

def test_a_stalled_room_leaves_another_room_on_the_same_edge_alone(
        origin: Origin, start_edge: Callable[..., Service], tmp_path: Path) -> None:
    with demo_origin(tmp_path, OTHER) as other:
        with RoomProxy({ROOM: origin.url, OTHER: other.url}) as proxy:
            port = free_port()
            start_edge(proxy.url, port, env={"TOWNSQUARE_EDGE_UPSTREAM_TIMEOUT": "7"})
            edge_url = f"http://127.0.0.1:{port}"

            async def drill() -> dict[str, object]:
                a, b = Audience(origin, [port], ROOM), Audience(other, [port], OTHER)
                a.start()
                b.start()
                await asyncio.sleep(1.5)
                t0 = time.monotonic()
                await asyncio.sleep(3.5)
                t1 = time.monotonic()
                b_before = b.statuses()
                proxy.stall(OTHER)
                await asyncio.sleep(9)
                t2 = time.monotonic()
                metrics = await asyncio.to_thread(httpx.get, edge_url + "/metrics")
                states = [(await asyncio.to_thread(
                    httpx.get, f"{edge_url}/api/listeners/{r}")).json()["upstream"]
                    for r in (ROOM, OTHER)]
                a.stop()
                b.stop()
                b_during = dict(b.statuses() - b_before)
                opened = re.search(r"^townsquare_edge_breakers_open (\S+)$", metrics.text, re.M)
                return {"p99_before": p99(a.delays(t0, t1)),
                        "p99_during": p99(a.delays(t1 + 0.5, t2)),
                        "parts_during": len(a.delays(t1, t2)), "troubles": a.troubles(),
                        "b_during": b_during, "states": states,
                        "breakers_open": float(opened[1]) if opened else -1.0,
                        "held": proxy.counts[OTHER]}

            f = asyncio.run(drill())
    print(f"\nstalled room: room {OTHER}'s upstream held unanswered for 9 s; room {ROOM} on the "
          f"same edge: part delay p99 {f['p99_before'] * 1000:.0f} ms before, "  # type: ignore[operator]
          f"{f['p99_during'] * 1000:.0f} ms during, {f['parts_during']} parts; "  # type: ignore[operator]
          f"{OTHER} answers during the stall {f['b_during']}; circuits (a, b) {f['states']}, "
          f"breakers open {f['breakers_open']}")
    assert f["p99_during"] < 1.0  # type: ignore[operator]
    assert f["parts_during"] >= 6 * 25  # type: ignore[operator]  # ~4.7 parts/s for 8.5 s
    assert not f["troubles"], f["troubles"]
    # The stalled room's requests timed out and opened its circuit; the other room's stayed shut.
    assert f["states"][0] == "closed"  # type: ignore[index]
    assert f["states"][1] != "closed" and f["breakers_open"] == 1  # type: ignore[index]


# -- (4) an edge killed under a listener --------------------------------------------------------

def test_listener_resumes_on_a_second_edge_after_a_kill(
        origin: Origin, start_edge: Callable[..., Service]) -> None:
    first, second = free_port(), free_port()
    doomed = start_edge(origin.url, first)
    start_edge(origin.url, second)
    playlist = media_path(origin.url, ROOM)
    listener = Follower([first, second], playlist)

    async def drill() -> tuple[float, float]:
        task = asyncio.create_task(listener.run())
        await asyncio.sleep(3)
        assert listener.received, "nothing received before the kill"
        last_before = max(listener.received.values())
        doomed.proc.kill()  # SIGKILL, to the pid this test started
        killed = time.monotonic()
        deadline = killed + 4 * TD
        while time.monotonic() < deadline and max(listener.received.values()) <= killed:
            await asyncio.sleep(0.05)
        task.cancel()
        after = [t for t in listener.received.values() if t > killed]
        assert after, "the listener never resumed"
        return min(after) - killed, min(after) - last_before

    resumed, gap = asyncio.run(drill())
    print(f"\nedge killed (-9): the listener had its next part from the second edge "
          f"{resumed * 1000:.0f} ms after the kill (gap between parts {gap * 1000:.0f} ms; "
          f"limit {3 * TD:.0f} s)")
    assert resumed < 3 * TD
    assert listener.failures, "the kill went unnoticed"
