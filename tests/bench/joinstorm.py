"""Join storm, on demand: `python -m tests.bench.joinstorm` (results in results/joinstorm.json).

N simulated LL-HLS listeners (`townsquare loadtest`, a canary group in its own process) join
within one second on a cold edge, a fresh process with nothing cached, in front of a live origin
(`townsquare origin --demo`). What a storm must not do: fail a listener, or make the edge ask
the origin for the same object twice. What it is measured by: each listener's time to its
first part. The reference in the same run is the same N joining the same edge once it is warm
(right after the cold storm, with the room's objects in its cache), so the difference is what
coldness costs.

Upstream requests are counted at the origin itself, per request target: the origin runs here
with a thin ASGI layer around its application that notes when each request came and went and
the lifetime its answer granted (`python -m tests.bench.joinstorm --serve-origin ...`). The
origin's own counters are per kind only; a per-object count needs the target. A media object
(part, segment, init) may be asked for once; a playlist again once its previous answer has
expired, never while that answer is still in flight or fresh.

Every step says which CPUs each process had; the largest N whose client kept up is the figure
that counts (past it, first-part times are the client's own queueing, cold and warm alike).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import ExitStack
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx

from tests.edge.conftest import counters, origin_requests, wait_live
from tests.support.procs import free_port, running

ROOM = "storm"
RESULTS = Path(__file__).parent / "results" / "joinstorm.json"
# Where the processes run. Unpinned by default: joining costs the Python client far more CPU
# than listening does, and on two CPUs a client held to one of them saturated at about half
# the N it reached with two processes free to use both (the canary shows whether the edge,
# which then shares the CPUs, kept up). BENCH_JOINSTORM_PINNED=1: origin and edge on CPU 1, the
# load generator on CPU 0, as in the offload benchmark.
PINNED = (os.cpu_count() or 1) >= 2 and os.environ.get("BENCH_JOINSTORM_PINNED") == "1"
PROCESSES = int(os.environ.get("BENCH_JOINSTORM_PROCESSES", "1" if PINNED else "2"))
SERVER_CPU, LOAD_CPU = "1", "0"
RAMP = 1.0  # every listener joins within this many seconds
CANARY = 5
TARGET_P99_S = 1.0
ACCESS_PATH = "/bench/access"
MAX_TARGETS = 200_000  # the access log's bound: far more than a storm asks for
# An answer's lifetime is reckoned from when the edge got it; the origin sees the request a
# little earlier than the edge sees the answer, so gaps are compared with this much slack.
SLACK_S = 0.05

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


# -- the counted origin ------------------------------------------------------------------------

class AccessLog:
    """ASGI layer: (start, end, status, max-age) of every request by target; GET /bench/access
    answers with them as JSON (and `?clear=1` forgets them)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.log: dict[str, list[tuple[float, float, int, float]]] = {}
        self.dropped = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        query = scope["query_string"].decode("latin-1")
        if path == ACCESS_PATH:
            body = json.dumps({"targets": self.log, "dropped": self.dropped}).encode()
            if "clear=1" in query:
                self.log, self.dropped = {}, 0
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        if not path.startswith("/live/"):  # the benchmark's own probes: /metrics, /healthz
            await self.app(scope, receive, send)
            return
        target = f"{path}?{query}" if query else path
        start = time.monotonic()
        answer: dict[str, Any] = {"status": 0, "max_age": 0.0}

        async def noting(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"cache-control":
                        m = re.search(rb"max-age=(\d+)", value)
                        answer["max_age"] = float(m[1]) if m else 0.0
            await send(message)

        try:
            await self.app(scope, receive, noting)
        finally:
            if target in self.log or len(self.log) < MAX_TARGETS:
                self.log.setdefault(target, []).append(
                    (start, time.monotonic(), answer["status"], answer["max_age"]))
            else:
                self.dropped += 1


def serve_origin(room: str, port: int, data: str) -> None:
    """`townsquare origin --demo ROOM`, the very same, with `AccessLog` around its app."""
    from packager.origin import build_app
    from serving.runner import run_until_signalled
    from townsquare import stack
    from townsquare.cli import build_parser

    def counted(*args: Any, **kwargs: Any) -> Any:
        return AccessLog(build_app(*args, **kwargs))

    # The origin command builds its app through this name; everything else is left as it is.
    stack.build_app = counted  # type: ignore[attr-defined]
    args = build_parser().parse_args(["origin", "--demo", room, "--port", str(port),
                                      "--data", data])
    run_until_signalled(lambda stop: stack.run_origin(args, stop))


# -- one storm ---------------------------------------------------------------------------------

def _far_behind(main: float | None, canary: float | None) -> bool:
    """Whether the main group's figure is past twice the canaries' and 0.1 s more."""
    return main is not None and canary is not None and main > 2 * canary + 0.1


def _pin(pid: int) -> None:
    if PINNED:
        subprocess.run(["taskset", "-a", "-p", "-c", SERVER_CPU, str(pid)], check=True,
                       capture_output=True)


def _kind(target: str) -> str:
    path, _, query = target.partition("?")
    if path.endswith((".m4s", ".mp4")):
        return "media"  # parts, segments, init: immutable, asked once
    if path.endswith("master.m3u8"):
        return "master"
    if path.endswith(".m3u8"):
        return "blocking_playlist" if "_HLS_msn" in query else "playlist"
    return "other"


def upstream_check(log: dict[str, list[list[float]]]) -> dict[str, Any]:
    """What the origin was asked, per kind, and every request that should not have been."""
    by_kind: Counter[str] = Counter()
    objects: Counter[str] = Counter()
    most: Counter[str] = Counter()
    repeats: list[dict[str, Any]] = []
    for target, calls in log.items():
        kind = _kind(target)
        by_kind[kind] += len(calls)
        objects[kind] += 1
        most[kind] = max(most[kind], len(calls))
        calls = sorted(calls)
        for (start, end, status, max_age), (later, *_) in pairwise(calls):
            # Media: never twice. Playlists: not while the last answer was in flight or fresh.
            fresh_until = end + (max_age if status == 200 else 0.0) - SLACK_S
            if kind == "media" or later < fresh_until:
                repeats.append({"target": target, "gap_s": round(later - start, 3),
                                "previous_status": status, "previous_max_age": max_age})
    return {"requests_by_kind": dict(by_kind), "objects_by_kind": dict(objects),
            "most_requests_for_one_object_by_kind": dict(most),
            "requests": sum(by_kind.values()), "objects": sum(objects.values()),
            "requests_beyond_one_per_object": repeats[:20],
            "requests_beyond_one_per_object_count": len(repeats)}


def storm(edge: str, origin: str, listeners: int, seconds: float, work: Path,
          label: str) -> dict[str, Any]:
    """N listeners join `edge` within RAMP seconds and listen for `seconds` more."""
    out = work / f"{label}-{listeners}.json"
    prefix = ["taskset", "-c", LOAD_CPU] if PINNED else []
    httpx.get(f"{origin}{ACCESS_PATH}?clear=1", timeout=10)
    before = origin_requests(origin)
    edge_before = (counters(edge, "townsquare_edge_upstream_requests_total"),
                   counters(edge, "townsquare_edge_coalesced_waits_total"))
    run = subprocess.run(
        [*prefix, sys.executable, "-m", "townsquare", "loadtest", "--url",
         f"{edge}/live/{ROOM}/master.m3u8", "--listeners", str(listeners), "--ramp", str(RAMP),
         "--duration", str(seconds), "--processes", str(PROCESSES), "--canary", str(CANARY),
         "--json", str(out), "--quiet"],
        check=False, capture_output=True, text=True, timeout=RAMP + seconds + 120)
    assert run.returncode == 0, run.stderr[-3000:]
    log = httpx.get(f"{origin}{ACCESS_PATH}", timeout=30).json()
    after = origin_requests(origin)
    s = json.loads(out.read_text())
    edge_upstream = _since(counters(edge, "townsquare_edge_upstream_requests_total"),
                           edge_before[0])
    coalesced = _since(counters(edge, "townsquare_edge_coalesced_waits_total"), edge_before[1])
    check = upstream_check(log["targets"])
    ttfp = s["time_to_first_part_s"]
    main_cpu = max((c["cpu_share"] for c in s["client_cpu"].values() if c["group"] == "main"),
                   default=0.0)
    canary = s["canary"]
    return {
        "listeners": listeners, "joined_within_s": RAMP, "listened_s": seconds,
        "errors": s["errors"], "canary_errors": canary["errors"],
        "listeners_with_a_part": ttfp["count"],
        "time_to_first_part_s": ttfp,
        "canary_time_to_first_part_s": canary["time_to_first_part_s"],
        "part_delay_s": s["part_delay_s"], "canary_part_delay_s": canary["part_delay_s"],
        "client_requests": s["requests"], "client_cpu": s["client_cpu"],
        # The loadtest's own verdict reads p99 part delays, and in a storm that short the first
        # part of each listener (from a playlist the edge may hold for up to a second) makes
        # the p99; p90 and the client's CPU say whether the client kept up. Unpinned, its
        # processes can be short of CPU each well under a core (the servers share the two):
        # then its listeners' first parts come far later than the canaries'.
        "client_saturated": bool(
            main_cpu > 0.8
            or _far_behind(s["part_delay_s"]["p90"], canary["part_delay_s"]["p90"])
            or _far_behind(ttfp["p90"], canary["time_to_first_part_s"]["p90"])),
        "loadtest_client_saturated_verdict": s["client_saturated"],
        "origin": {**check, "access_log_dropped": log["dropped"],
                   "origin_counter_requests": round(sum(after.values()) - sum(before.values()))},
        "edge_upstream_requests_by_kind": _by_first_label(edge_upstream),
        "edge_coalesced_waits_by_kind": _by_first_label(coalesced),
    }


def _since(now: dict[tuple[str, ...], float],
           before: dict[tuple[str, ...], float]) -> dict[tuple[str, ...], float]:
    return {k: v - before.get(k, 0.0) for k, v in now.items() if v - before.get(k, 0.0)}


def _by_first_label(samples: dict[tuple[str, ...], float]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for labels, n in samples.items():
        out[labels[0] if labels else ""] += int(n)
    return dict(out)


def step(origin: str, listeners: int, seconds: float, work: Path) -> dict[str, Any]:
    """A cold storm on a fresh edge, then the same N again on that edge, warm."""
    port = free_port()
    edge = f"http://127.0.0.1:{port}"
    with running(["edge", "--upstream", origin, "--port", str(port)],
                 work / f"edge-{listeners}.log", f"{edge}/healthz") as svc:
        _pin(svc.proc.pid)
        cold = storm(edge, origin, listeners, seconds, work, "cold")
        time.sleep(1.0)
        warm = storm(edge, origin, listeners, seconds, work, "warm")
    p99 = cold["time_to_first_part_s"]["p99"]
    return {
        "listeners": listeners, "cold": cold, "warm_reference": warm,
        "cold_over_warm_first_part_p99": round(p99 / warm["time_to_first_part_s"]["p99"], 2)
        if p99 is not None and warm["time_to_first_part_s"]["p99"] else None,
        "targets_met": {
            "zero_errors": not cold["errors"] and not cold["canary_errors"],
            "every_listener_got_a_part": cold["listeners_with_a_part"] == listeners,
            "at_most_one_upstream_request_per_object":
                cold["origin"]["requests_beyond_one_per_object_count"] == 0,
            "first_part_p99_under_1s": p99 is not None and p99 < TARGET_P99_S,
        },
    }


def run(sizes: list[int], seconds: float = 4.0, results: Path | None = RESULTS) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="joinstorm-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        o_port = free_port()
        origin = f"http://127.0.0.1:{o_port}"
        logf = stack.enter_context(open(work / "origin.log", "wb"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.joinstorm", "--serve-origin", ROOM, str(o_port),
             str(work / "data")], stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True)
        stack.callback(_stop, proc)
        wait_live(origin, ROOM, timeout=60)
        _pin(proc.pid)
        time.sleep(2)  # a few segments in the playlist, as a listener arriving mid-show finds it
        rows = [step(origin, n, seconds, work) for n in sizes]
    unsaturated = [r["listeners"] for r in rows if not r["cold"]["client_saturated"]]
    result = {
        "command": f"python -m tests.bench.joinstorm  (N = {sizes}, {seconds:g} s each)",
        "cpus": (f"origin (demo broadcast) and edge on CPU {SERVER_CPU}, load generator "
                 f"(townsquare loadtest: {PROCESSES} process(es) and a canary process) on CPU "
                 f"{LOAD_CPU}" if PINNED else
                 f"unpinned: origin, edge and the load generator ({PROCESSES} process(es) and a "
                 "canary process) on any CPU"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "reference": "the same N joining the same edge again right after, warm",
        "steps": rows,
        "largest_n_client_not_saturated": max(unsaturated) if unsaturated else None,
        "at_that_n": _headline(next((r for r in rows if unsaturated
                                     and r["listeners"] == max(unsaturated)), None)),
        "every_storm_zero_errors": all(r["targets_met"]["zero_errors"] for r in rows),
        "every_storm_at_most_one_upstream_request_per_object": all(
            r["targets_met"]["at_most_one_upstream_request_per_object"] for r in rows),
        "targets": {"errors": 0, "upstream_requests_per_object": 1,
                    "time_to_first_part_p99_s": TARGET_P99_S},
    }
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _headline(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    cold, warm = row["cold"]["time_to_first_part_s"], row["warm_reference"]["time_to_first_part_s"]
    return {"listeners": row["listeners"], "cold_first_part_p50_s": cold["p50"],
            "cold_first_part_p99_s": cold["p99"], "warm_first_part_p50_s": warm["p50"],
            "warm_first_part_p99_s": warm["p99"], "targets_met": row["targets_met"]}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to the origin's process group (it suspends the room), SIGKILL if it hangs."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def main() -> None:
    sizes = [int(s) for s in os.environ.get("BENCH_JOINSTORM_SIZES", "500,1000,2000,3000,5000")
             .split(",")]
    seconds = float(os.environ.get("BENCH_JOINSTORM_SECONDS", "4"))
    print(json.dumps(run(sizes, seconds), indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve-origin":
        serve_origin(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
