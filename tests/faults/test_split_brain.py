"""Split brain: two ingest nodes share PostgreSQL and S3, and the one that owns a room loses
its database link (a TCP proxy between it and the server is cut) while it keeps running and
keeps reaching the store. It must stop publishing the room before the lease it can no longer
renew expires; the other node adopts the room once the lease has lapsed, in a new epoch. The
store is the witness: the part objects of the old and the new epoch folder, by the time each
first appeared in a listing polled every 0.2 s, must not interleave: at no moment do two
nodes write parts for one room. Once the link heals, the cut-off node must not take the room
back.

The link is cut two ways: `refuse` (open connections reset, new ones refused: the server is
plainly gone) and `blackhole` (a partition: nothing is closed, but no byte goes through and
new connections hang, so the node learns of it only through its own timeouts)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import S3Server, start_moto
from tests.faults.drill import AUTH, ROOM, TOKEN, ClusterNode, Speaker
from tests.support.postgres import PostgresServer
from tests.support.tcpproxy import CutMode, TcpProxy

pytestmark = [pytest.mark.slow]
LEASE = 3.0
STOP_WITHIN = LEASE * 2 / 3  # the node stops its rooms this long after its last renewal
SLACK = 0.75  # a renewal tick (0.25 s), the part being cut, the store's write, a poll
RENDITION = "aac96"
LOG_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")
PART_RE = re.compile(rf"^live/{ROOM}/{RENDITION}/(?P<epoch>e(?P<n>\d+)-[0-9a-f]{{6}})/"
                     r"p(?P<msn>\d+)\.(?P<i>\d+)\.m4s$")


@dataclass(frozen=True)
class Part:
    key: str
    epoch: str  # e{n}-{tag}
    n: int
    seen: float  # wall clock at the end of the first listing that held it
    seen_after: float  # wall clock at the end of the listing before: written after this
    modified: float  # the store's LastModified


@dataclass
class StoreWatch:
    """Lists the room's rendition folder in the bucket every `interval` s, in a thread, and
    keeps when each part object first appeared."""

    s3: S3Server
    interval: float = 0.2
    parts: dict[str, Part] = field(default_factory=dict)
    listings: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="store-watch")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(10)

    def snapshot(self) -> list[Part]:
        with self._lock:
            return sorted(self.parts.values(), key=lambda p: (p.seen, p.n, p.key))

    def by_epoch(self) -> dict[str, list[Part]]:
        out: dict[str, list[Part]] = {}
        for p in self.snapshot():
            out.setdefault(p.epoch, []).append(p)
        return out

    def _run(self) -> None:
        client = self.s3.client()
        prefix = f"live/{ROOM}/{RENDITION}/"
        before = time.time()
        while not self._halt.is_set():
            found: list[tuple[str, float]] = []
            try:
                token: dict[str, str] = {}
                while True:
                    page = client.list_objects_v2(Bucket=self.s3.bucket, Prefix=prefix, **token)
                    found += [(o["Key"], o["LastModified"].timestamp())
                              for o in page.get("Contents", [])]
                    if not page.get("IsTruncated"):
                        break
                    token = {"ContinuationToken": page["NextContinuationToken"]}
            except Exception as exc:  # noqa: BLE001 - kept for the report, the drill goes on
                self.errors.append(repr(exc))
                self._halt.wait(self.interval)
                continue
            now = time.time()
            with self._lock:
                self.listings += 1
                for key, modified in found:
                    m = PART_RE.match(key)
                    if m is None or key in self.parts:
                        continue
                    self.parts[key] = Part(key, m["epoch"], int(m["n"]), now, before, modified)
            before = now
            self._halt.wait(self.interval)


@contextmanager
def two_nodes(tmp: Path, postgres: PostgresServer
              ) -> Iterator[tuple[ClusterNode, ClusterNode, TcpProxy, S3Server]]:
    """Node 1 reaches PostgreSQL through a proxy the test can cut, node 2 directly."""
    s3 = start_moto(f"split-brain-{time.time_ns()}")  # moto's objects outlive a server
    url = postgres.create_database("split")
    proxy = TcpProxy("127.0.0.1", postgres.port)
    proxy.start()
    direct = f"127.0.0.1:{postgres.port}/"
    assert direct in url, url
    env = {**s3.env(), "TOWNSQUARE_ADMIN_TOKEN": TOKEN,
           "TOWNSQUARE_LEASE_SECONDS": str(LEASE), "TOWNSQUARE_PUBLISH_STATE": "false"}
    nodes: list[ClusterNode] = []
    try:
        nodes.append(ClusterNode(1, tmp, {**env, "TOWNSQUARE_DATABASE_URL":
                                          url.replace(direct, f"{proxy.address}/")}))
        nodes.append(ClusterNode(2, tmp, {**env, "TOWNSQUARE_DATABASE_URL": url}))
        yield nodes[0], nodes[1], proxy, s3
    finally:
        proxy.heal()  # so that node 1 can hand its state over as it stops
        for node in nodes:
            node.svc.stop()
        proxy.stop()
        s3.server.stop()  # type: ignore[attr-defined]


def _wait(what: str, timeout: float, check: Any, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(every)


def _logged(log: str, text: str, since: float) -> float | None:
    """Seconds from `since` to the first log line after it that holds `text`."""
    for line in log.splitlines():
        m = LOG_TIME_RE.match(line)
        if m is None or text not in line:
            continue
        at = time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S")) + int(m[2]) / 1000
        if at >= since - 1.0:
            return round(at - since, 2)
    return None


def _tail(log: str, chars: int = 2500) -> str:
    return "\n".join(ln for ln in log.splitlines() if "alembic" not in ln)[-chars:]


def _timeline(parts: list[Part], cut: float) -> str:
    return "\n".join(f"  {p.seen - cut:+7.3f} s (after {p.seen_after - cut:+7.3f}, "
                     f"LastModified {p.modified - cut:+6.1f})  {p.key.rsplit('/', 2)[-2:]}"
                     for p in parts)


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_a_node_cut_from_the_database_stops_before_another_takes_its_room(
        tmp_path: Path, own_postgres: PostgresServer, mode: CutMode) -> None:
    with two_nodes(tmp_path, own_postgres) as (one, two, proxy, s3):
        created = httpx.post(f"{one.api}/rooms", json={"name": ROOM}, headers=AUTH, timeout=10)
        assert created.status_code == 201, created.text
        key = created.json()["stream_key"]
        watch = StoreWatch(s3)
        watch.start()
        speaker = Speaker(f"rtmp://127.0.0.1:{one.rtmp}/live/{key}", tmp_path / "speaker.log")
        speaker.start()
        try:
            _wait("the speaker joining node 1", 30, lambda: one.room()["speakers"], 0.2)
            # Parts flow: node 1's epoch folder fills, steadily.
            _wait("node 1's parts in the store", 30,
                  lambda: len(watch.snapshot()) >= 12, 0.2)
            assert two.room()["node"] == "node-1", "node 1 owns the room"
            before_cut = watch.by_epoch()
            assert len(before_cut) == 1, f"one epoch folder before the cut: {list(before_cut)}"
            old = next(iter(before_cut))
            old_n = before_cut[old][0].n

            cut = time.time()
            proxy.cut(mode)

            def new_epoch() -> list[str]:
                return [e for e, ps in watch.by_epoch().items() if ps[0].n > old_n]

            _wait("node 2 writing the room in a new epoch", 20, new_epoch, 0.1)

            def old_epoch_quiet() -> bool:
                # Late writes of the old epoch would show by now; if node 1 is still writing,
                # wait a while longer, so that the report says when (if ever) it stopped.
                last = watch.by_epoch()[old][-1].seen
                return time.time() - last > 3.0 or time.time() - cut > 20.0

            _wait("node 1's epoch quiet", 25, old_epoch_quiet, 0.2)
            after_cut = watch.by_epoch()
            new = new_epoch()
            assert len(new) == 1, f"one new epoch after the cut: {list(after_cut)}"
            new_parts, old_parts = after_cut[new[0]], after_cut[old]
            old_last, new_first = old_parts[-1], new_parts[0]
            figures = {
                "cut_to_node1_last_part_s": round(old_last.seen - cut, 2),
                "cut_to_node2_first_part_s": round(new_first.seen - cut, 2),
                "quiet_s": round(new_first.seen - old_last.seen, 2),
                "quiet_at_least_s": round(new_first.seen_after - old_last.seen, 2),
                "node1_logged_stop_s": _logged(one.output(), "lease not renewed", cut),
                "node2_logged_adoption_s": _logged(two.output(), "adopted", cut),
                "old_epoch": old, "new_epoch": new[0], "listings": watch.listings,
            }
            print(f"\nsplit brain ({mode}, lease {LEASE} s):", figures)
            around = [p for p in watch.snapshot() if p.seen >= cut - 0.5][:60]
            story = f"{figures}\nparts around the cut:\n{_timeline(around, cut)}\n" \
                    f"node 1 log:\n{_tail(one.output())}\nnode 2 log:\n{_tail(two.output())}"

            # Every check is made, and all that failed are reported together with the story.
            problems: list[str] = []
            # Never two writers: every part of the old epoch appeared in a listing before the
            # first part of the new one did (and the store's clock agrees, to its second).
            overlap = [p for p in old_parts if p.seen >= new_first.seen]
            if overlap:
                problems.append(f"two nodes wrote the room at once: {len(overlap)} parts of "
                                f"{old} appeared after the first of {new[0]}, for "
                                f"{old_last.seen - new_first.seen:.2f} s")
            if max(p.modified for p in old_parts) > min(p.modified for p in new_parts):
                problems.append("LastModified of old-epoch parts after new-epoch ones")
            if old_last.seen > cut + STOP_WITHIN + SLACK:
                problems.append(f"node 1 kept publishing {old_last.seen - cut:.2f} s after the "
                                f"cut, past 2/3 of its {LEASE:g} s lease (+{SLACK} s)")
            if "lease not renewed" not in one.output():
                problems.append("node 1 did not log that it stopped the room (lease not renewed)")
            if new_first.n <= old_n:
                problems.append(f"the new epoch {new[0]} does not fence {old}")

            # What node 1's dashboard shows while it is still cut off: its renewals failing,
            # counted as they fall due (a renewal stuck on the silent link must not hold the
            # keeper until the heal).
            during = _metrics(one.api)
            if _failed_renewals(during) < 1:
                problems.append(f"node 1's metrics during the cut show no failed renewal: {during}")

            # The link heals: node 1 must leave the room to node 2.
            healed = time.time()
            at_heal_1 = one.output()
            proxy.heal()
            _wait("node 1 reading the registry again", 15,
                  lambda: one.room()["node"] is not None, 0.3)
            time.sleep(2 * LEASE)  # two lease renewals, many looks for orphans
            for node in (one, two):
                room = node.room()
                if room["node"] != "node-2" or not room["live"]:
                    problems.append(f"after the heal {node.id} says the room is "
                                    f"{room['state']} on {room['node']}")
            final = watch.by_epoch()
            if set(final) != {old, new[0]}:
                problems.append(f"epoch folders after the heal: {list(final)}")
            late = [p for p in final[old] if p.seen > healed]
            if late:
                problems.append(f"{len(late)} new parts in node 1's epoch after the heal:\n"
                                + _timeline(late, cut))
            if not any(p.seen > healed + LEASE for p in final[new[0]]):
                problems.append("node 2 stopped publishing the room after the heal")
            if watch.errors:
                problems.append(f"listing the store failed: {watch.errors[-3:]}")
            # What an operator's dashboard shows of it.
            m1, m2 = _metrics(one.api), _metrics(two.api)
            if m1.get('townsquare_ingest_lease_losses_total{reason="fence"}', 0) < 1:
                problems.append(f"node 1's metrics show no lease lost to the fence: {m1}")
            if _failed_renewals(m1) < 1:
                problems.append(f"node 1's metrics show no failed renewal: {m1}")
            if m1.get("townsquare_ingest_leases_held") != 0:
                problems.append(f"node 1's metrics say it holds leases: {m1}")
            if m2.get("townsquare_ingest_rooms_adopted_total", 0) < 1 \
                    or m2.get("townsquare_ingest_leases_held") != 1:
                problems.append(f"node 2's metrics do not show the room adopted and held: {m2}")
            story = f"{story}\nnode 1 log after the heal:\n" \
                    f"{_tail(one.output()[len(at_heal_1):], 1500)}"
            assert not problems, "\n".join(problems) + "\n" + story
        finally:
            speaker.stop()
            watch.stop()


def _failed_renewals(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items()
               if k.startswith("townsquare_ingest_lease_renewal_failures_total"))


def _metrics(api: str) -> dict[str, float]:
    """The node's lease metrics, by sample name with labels."""
    text = httpx.get(f"{api}/metrics", timeout=5).text
    return {name: float(value) for name, value in
            (line.rsplit(" ", 1) for line in text.splitlines()
             if line.startswith(("townsquare_ingest_lease", "townsquare_ingest_rooms_adopted")))}
