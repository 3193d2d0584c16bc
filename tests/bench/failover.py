"""Failover, on demand: `python -m tests.bench.failover` (results/failover.json).

Three ingest nodes sharing PostgreSQL and S3 (moto), the origin tier and an edge, as the
cluster drill runs them (`tests/faults/test_cluster_failover.py`). A room is broadcast by
the ffmpeg CLI over RTMP; it reconnects a second after its connection drops, to a node that
is still up, as behind a TCP load balancer. The listener is an LL-HLS poller through the
edge: blocking playlist reloads for the hinted part, as hls.js asks, and each new part
fetched and decoded so that its level says whether the speaker is in it.

Each round kills the room's owner with SIGKILL (by the pid this benchmark started) and
times, from the kill:
- **parts back**: the first part of the room's next epoch (another node adopted it) at
  the listener: the room is on air again;
- **speaker back**: the first part of it that carries the speaker's tone;
then starts the killed node again, so that every round has the same cluster. Five rounds;
median and worst.

Then as many **hand-over** rounds, a deploy's case: the owner is stopped with SIGTERM and
hands the room over (its lease released, not left to lapse); the speaker is sent to another
node first, as a load balancer stops sending a draining node new connections. The same
figures, from the signal, and how long the old owner took to exit.

The reference, in the same run: for the kills, the lease; for the hand-overs, the kills.
A dead node's room cannot be adopted before its lease lapses; leases are renewed every
third of their length, so at the kill between 2/3 of a lease and a whole one is left. Each
round reads what was left from the database (`rooms.lease_expires`, right after the kill)
and reports both ratios: over the configured lease, and over the lease that was actually
left, the floor for that round.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np

from tests.conftest import start_moto
from tests.faults.drill import ROOM, TOKEN, Speaker
from tests.faults.test_cluster_failover import Node
from tests.support.postgres import PostgresServer
from tests.support.procs import Service, free_port, wait_http

RESULTS = Path(__file__).parent / "results" / "failover.json"
ROUNDS = int(os.environ.get("BENCH_FAILOVER_ROUNDS", "5"))
LEASE = float(os.environ.get("BENCH_FAILOVER_LEASE", "6"))  # TOWNSQUARE_LEASE_SECONDS' default
RENDITION = "aac96"
TONE_DBFS = -30.0  # the speaker's 440 Hz sine sits near −3 dBFS; silence far below this
AUTH = {"Authorization": f"Bearer {TOKEN}"}
_HINT = re.compile(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="([^"]*?)p(\d+)\.(\d+)\.m4s"')
_PART = re.compile(r'#EXT-X-PART:.*URI="([^"]+)"')
_MAP = re.compile(r'#EXT-X-MAP:URI="([^"]+)"')


@dataclass(frozen=True)
class Part:
    arrived: float  # time.monotonic() when the listener had it
    uri: str
    epoch: str  # the epoch folder (e{n}-{tag}): a new one after each adoption
    dbfs: float


class PartListener(threading.Thread):
    """An LL-HLS listener on one rendition through the edge: blocking reloads for the
    hinted part; each part it has not seen is fetched and decoded (with its epoch's init)."""

    def __init__(self, edge: str) -> None:
        super().__init__(daemon=True)
        self.url = f"{edge}/live/{ROOM}/{RENDITION}/live.m3u8"
        self.parts: list[Part] = []
        self.errors = 0
        self.halt = threading.Event()
        self._seen: set[str] = set()
        self._inits: dict[str, bytes] = {}

    def run(self) -> None:
        with httpx.Client(timeout=15.0) as client:
            hint: tuple[int, int] | None = None
            while not self.halt.is_set():
                params = {"_HLS_msn": hint[0], "_HLS_part": hint[1]} if hint else {}
                try:
                    answer = client.get(self.url, params=params)
                    answer.raise_for_status()
                    hint = self._take(client, answer.text)
                except (httpx.HTTPError, av.FFmpegError, ValueError):
                    self.errors += 1
                    hint = None  # ask without blocking until the room answers again
                    self.halt.wait(0.1)

    def _take(self, client: httpx.Client, text: str) -> tuple[int, int] | None:
        maps = _MAP.findall(text)
        for uri in _PART.findall(text):
            if uri in self._seen:
                continue
            self._seen.add(uri)
            folder = uri.rpartition("/")[0]
            init_uri = next((m for m in reversed(maps) if m.rpartition("/")[0] == folder), None)
            if init_uri is None:
                continue
            if init_uri not in self._inits:
                self._inits[init_uri] = self._get(client, init_uri)
            body = self._get(client, uri)
            self.parts.append(Part(time.monotonic(), uri, folder.rpartition("/")[2],
                                   _dbfs(self._inits[init_uri] + body)))
        hint = _HINT.search(text)
        return (int(hint[2]), int(hint[3])) if hint else None

    def _get(self, client: httpx.Client, uri: str) -> bytes:
        answer = client.get(str(httpx.URL(self.url).join(uri)))
        answer.raise_for_status()
        return answer.content

    def stop(self) -> None:
        self.halt.set()
        self.join(20)


def _dbfs(mp4: bytes) -> float:
    """RMS level of a part (init + part), in dBFS."""
    with av.open(io.BytesIO(mp4), mode="r", format="mp4") as container:
        pcm = [f.to_ndarray().astype(np.float64) for f in container.decode(audio=0)]
    if not pcm:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(np.concatenate(pcm, axis=1)))))
    return 20 * float(np.log10(max(rms, 1e-6)))


@dataclass
class Cluster:
    nodes: list[Node]
    edge: str
    services: dict[str, Service]  # the tier and the edge
    postgres: PostgresServer
    database: str

    def lease_expires(self) -> float:
        """When the room's lease lapses (time.time()), as the database holds it."""
        sql = f"SELECT lease_expires FROM rooms WHERE name = '{ROOM}'"
        return float(self.postgres.psql(sql, database=self.database).strip())


@contextmanager
def cluster(work: Path, nodes: int, lease: float) -> Iterator[Cluster]:
    """`nodes` ingest nodes on PostgreSQL and S3 (moto), the origin tier and an edge."""
    with ExitStack() as stack:
        pg = PostgresServer()
        pg.start()
        stack.callback(pg.remove)
        s3 = start_moto(f"failover-{time.time_ns()}")
        stack.callback(s3.server.stop)  # type: ignore[attr-defined]
        env = {**s3.env(), "TOWNSQUARE_ADMIN_TOKEN": TOKEN,
               "TOWNSQUARE_DATABASE_URL": pg.create_database("failover"),
               "TOWNSQUARE_LEASE_SECONDS": str(lease), "TOWNSQUARE_PUBLISH_STATE": "false"}
        members: list[Node] = []
        stack.callback(lambda: [node.svc.stop() for node in members])
        for n in range(1, nodes + 1):
            members.append(Node(n, work, env))
        tier_port, edge_port = free_port(), free_port()
        tier = Service(["tier", "--port", str(tier_port)], work / "tier.log", env)
        stack.callback(tier.stop)
        wait_http(f"http://127.0.0.1:{tier_port}/healthz", 30, tier.proc)
        edge = Service(["edge", "--upstream", f"http://127.0.0.1:{tier_port}", "--port",
                        str(edge_port)], work / "edge.log")
        stack.callback(edge.stop)
        edge_url = f"http://127.0.0.1:{edge_port}"
        wait_http(f"{edge_url}/healthz", 30, edge.proc)
        for node in members:  # started with the rest, they answer once they have met
            node.ready()
        yield Cluster(members, edge_url, {"tier": tier, "edge": edge}, pg, "failover")


def _owner(nodes: list[Node]) -> Node:
    """The node that publishes the room, as any node still up tells."""
    for node in nodes:
        if node.svc.alive():
            try:
                name = str(node.room()["node"])
            except (httpx.HTTPError, KeyError, ValueError):
                continue
            return next(n for n in nodes if f"node-{n.n}" == name)
    raise RuntimeError("no node answers for the room")


def _steady(listener: PartListener, seconds: float, timeout: float = 60.0) -> None:
    """Until the listener has had loud parts (the speaker) for `seconds` without a gap."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        recent = [p for p in listener.parts if p.arrived > now - seconds]
        if (len(recent) >= seconds / 0.3 and all(p.dbfs > TONE_DBFS for p in recent)
                and listener.parts[0].arrived < now - seconds):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the room did not play steadily for {seconds:g} s")


def one_round(cl: Cluster, listener: PartListener, speaker: Speaker, key: str,
              restart: bool = True, timeout: float = 60.0,
              handover: bool = False) -> dict[str, Any]:
    """The owner killed (SIGKILL), or stopped (SIGTERM) when `handover`; timed from then."""
    nodes = cl.nodes
    owner = _owner(nodes)
    other = next(n for n in nodes if n is not owner and n.svc.alive())
    if handover:
        # A draining node gets no new connections: the speaker's next one goes elsewhere.
        speaker.url = f"rtmp://127.0.0.1:{other.rtmp}/live/{key}"
    before = listener.parts[-1]
    stopped_at, stopped_wall = time.monotonic(), time.time()
    if handover:
        owner.svc.proc.send_signal(signal.SIGTERM)  # by the pid this benchmark started
        owner.svc.proc.wait(60)
    else:
        owner.svc.proc.kill()  # SIGKILL, by the pid this benchmark started
        owner.svc.proc.wait(10)
    gone = time.monotonic() - stopped_at
    # Nobody renews or takes a killed node's lease before it lapses.
    lease_left = None if handover else cl.lease_expires() - stopped_wall
    # The load balancer sends the reconnecting speaker to a node that is up.
    speaker.url = f"rtmp://127.0.0.1:{other.rtmp}/live/{key}"
    back = heard = None
    deadline = stopped_at + timeout
    while (back is None or heard is None) and time.monotonic() < deadline:
        time.sleep(0.05)
        fresh = [p for p in listener.parts if p.arrived > stopped_at and p.epoch != before.epoch]
        back = back or (fresh[0] if fresh else None)
        heard = heard or next((p for p in fresh if p.dbfs > TONE_DBFS), None)
    if back is None or heard is None:
        raise TimeoutError(f"room not back {timeout:g} s after node-{owner.n} was "
                           + ("stopped" if handover else "killed"))
    new_owner = _owner(nodes)
    if restart:
        owner.start()  # the cluster whole again for the next round
    times = {
        "parts_back_s": round(back.arrived - stopped_at, 3),
        "speaker_back_s": round(heard.arrived - stopped_at, 3),
        "listener_gap_s": round(back.arrived - before.arrived, 3),
    }
    if handover:
        return {"stopped": f"node-{owner.n}", "handed_to": f"node-{new_owner.n}", **times,
                "old_owner_gone_s": round(gone, 3),
                "last_part_before_stop_s": round(stopped_at - before.arrived, 3)}
    assert lease_left is not None
    return {
        "killed": f"node-{owner.n}", "adopted_by": f"node-{new_owner.n}",
        "lease_left_at_kill_s": round(lease_left, 3), **times,
        "parts_back_after_lease_lapsed_s": round(times["parts_back_s"] - lease_left, 3),
        "last_part_before_kill_s": round(stopped_at - before.arrived, 3),
    }


def _cpus(pid: int) -> str:
    return ",".join(map(str, sorted(os.sched_getaffinity(pid))))


def _spread(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    values = [r[key] for r in rows]
    return {"median_s": round(statistics.median(values), 3), "worst_s": round(max(values), 3)}


def _figures(rows: list[dict[str, Any]], key: str, lease: float) -> dict[str, float]:
    values = [r[key] for r in rows]
    median, worst = statistics.median(values), max(values)
    over_left = [r[key] / r["lease_left_at_kill_s"] for r in rows]
    return {**_spread(rows, key),
            "median_over_lease": round(median / lease, 2),
            "worst_over_lease": round(worst / lease, 2),
            "median_over_lease_left": round(statistics.median(over_left), 2),
            "worst_over_lease_left": round(max(over_left), 2)}


def run(rounds: int = ROUNDS, lease: float = LEASE, nodes: int = 3,
        results: Path | None = RESULTS, settle: float = 3.0,
        handovers: int | None = None) -> dict[str, Any]:
    """`settle`: seconds of steady audio at the listener before each round; `handovers`:
    SIGTERM rounds after the kills (as many as `rounds` unless told)."""
    handovers = rounds if handovers is None else handovers
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp, \
            cluster(Path(tmp), nodes, lease) as cl:
        work, members, edge = Path(tmp), cl.nodes, cl.edge
        created = httpx.post(f"{members[0].api}/rooms", json={"name": ROOM}, headers=AUTH,
                             timeout=10)
        created.raise_for_status()
        key = created.json()["stream_key"]
        speaker = Speaker(f"rtmp://127.0.0.1:{members[0].rtmp}/live/{key}",
                          work / "speaker.log")
        speaker.start()
        listener = PartListener(edge)
        try:
            wait_http(f"{edge}/live/{ROOM}/master.m3u8", 45)
            listener.start()
            cpus = {**{f"node-{n.n}": _cpus(n.svc.proc.pid) for n in members},
                    **{name: _cpus(svc.proc.pid) for name, svc in cl.services.items()},
                    "speaker (ffmpeg)": _cpus(speaker.proc.pid) if speaker.proc else "",
                    "listener and moto (this process)": _cpus(os.getpid())}
            rows: list[dict[str, Any]] = []
            handed: list[dict[str, Any]] = []
            for i in range(rounds + handovers):
                _steady(listener, settle)
                last = i == rounds + handovers - 1
                if i < rounds:
                    rows.append(one_round(cl, listener, speaker, key, restart=not last))
                else:
                    handed.append(one_round(cl, listener, speaker, key, restart=not last,
                                            handover=True))
                print(f"round {i + 1}: {(rows + handed)[-1]}", flush=True)
            errors = listener.errors
        finally:
            listener.stop()
            speaker.stop()
    result = {
        "command": f"python -m tests.bench.failover  ({rounds} kills and {handovers} "
                   f"hand-overs, lease {lease:g} s, {nodes} nodes)",
        "setup": f"{nodes} ingest nodes (PostgreSQL, moto S3), townsquare tier, townsquare "
                 "edge; ffmpeg CLI speaker over RTMP (reconnects after 1 s to a node that is "
                 f"up); LL-HLS poller on {RENDITION} through the edge",
        "cpus": cpus,
        "lease_s": lease,
        "reference": "the lease: a killed node's room cannot be adopted before its lease "
                     "lapses; renewed every third, 2/3 to 1 lease is left at a kill "
                     "(lease_left_at_kill_s, read from the database in each round)",
        "lease_left_at_kill": {"median_s": round(statistics.median(
            r["lease_left_at_kill_s"] for r in rows), 3)},
        "parts_back": _figures(rows, "parts_back_s", lease),
        "speaker_back": _figures(rows, "speaker_back_s", lease),
        "rounds": rows,
        "listener_request_errors": errors,
    }
    if handed:
        kill_median = statistics.median(r["parts_back_s"] for r in rows) if rows else None
        result["handover"] = {
            "reference": "the kills of the same run: parts back over theirs (median)",
            "parts_back": _spread(handed, "parts_back_s"),
            "speaker_back": _spread(handed, "speaker_back_s"),
            "listener_gap": _spread(handed, "listener_gap_s"),
            "old_owner_gone": _spread(handed, "old_owner_gone_s"),
            "parts_back_over_kill": (round(statistics.median(
                r["parts_back_s"] for r in handed) / kill_median, 3) if kill_median else None),
            "rounds": handed,
        }
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    print(json.dumps(run(), indent=2))


if __name__ == "__main__":
    main()
