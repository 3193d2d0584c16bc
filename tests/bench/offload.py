"""Origin offload curve, on demand: `python -m tests.bench.offload` (results/offload.json).

One origin with a demo room, one edge in front of it, and `townsquare loadtest` driving N
simulated LL-HLS listeners at the edge for each step. At every step the origin's own request
counters say what the edge asked of it; the capacity model (`capacity.model.upstream_rps`)
says what it should ask. The promise: the origin's load does not grow with the audience
(largest / smallest step ≤ 1.05), and the model lands within 10 % of it.

With two or more CPUs the origin and the edge run on CPU 1 and the load generator on CPU 0;
the canary's part delays beside each step tell a saturated client from a saturated edge. Each
step keeps the whole part-delay distribution (for docs/img) and the edge's CPU share, from
which `capacity.measured` takes the requests one edge process serves per second of its core.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from capacity.model import DEFAULT_PARTS, upstream_rps
from serving.threads import stat_cpu_seconds
from tests.edge.conftest import origin_requests, wait_live
from tests.support.procs import free_port, running

ROOM = "offload"
RESULTS = Path(__file__).parent / "results" / "offload.json"
PINNED = (os.cpu_count() or 1) >= 2
SERVER_CPU, LOAD_CPU = "1", "0"
RENDITIONS, PART_TARGET = 3, 0.2133


def _pin(pid: int) -> None:
    if PINNED:
        subprocess.run(["taskset", "-a", "-p", "-c", SERVER_CPU, str(pid)], check=True,
                       capture_output=True)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of `pid` so far."""
    return stat_cpu_seconds(f"/proc/{pid}/stat")


def _step(edge: str, origin: str, listeners: int, seconds: float, work: Path,
          pids: dict[str, int]) -> dict[str, Any]:
    out = work / f"loadtest-{listeners}.json"
    ramp = min(10.0, max(1.0, listeners / 500))
    processes = max(1, min((os.cpu_count() or 2) - 1, 1 + listeners // 2000))
    prefix = ["taskset", "-c", LOAD_CPU] if PINNED else []
    cpu_before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    before, started = origin_requests(origin), time.monotonic()
    subprocess.run([*prefix, sys.executable, "-m", "townsquare", "loadtest", "--url",
                    f"{edge}/live/{ROOM}/master.m3u8", "--listeners", str(listeners),
                    "--ramp", str(ramp), "--duration", str(seconds), "--processes",
                    str(processes), "--canary", "5", "--json", str(out), "--quiet"],
                   check=True, capture_output=True, timeout=ramp + seconds + 120)
    elapsed = time.monotonic() - started
    after = origin_requests(origin)
    cpu = {name: _cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    summary = json.loads(out.read_text())
    asked = sum(after.values()) - sum(before.values())
    served = sum(summary["requests"].values()) + sum(summary["canary"]["requests"].values())
    model = upstream_rps(1, RENDITIONS, PART_TARGET, DEFAULT_PARTS)
    return {
        "listeners": listeners,
        "origin_requests_per_s": round(asked / elapsed, 2),
        # Which objects the edge asked for (playlist, blocking playlist, part, ...): where a
        # rise comes from when the audience grows.
        "origin_requests_per_s_by_kind": {
            kind: round((after[kind] - before.get(kind, 0)) / elapsed, 2)
            for kind in sorted(after) if after[kind] > before.get(kind, 0)},
        "model_requests_per_s": round(model, 2),
        "measured_over_model": round(asked / elapsed / model, 3),
        "listener_requests_per_s": summary["requests_per_s_steady_median"],
        "errors": summary["errors"],
        "part_delay_s": summary["part_delay_s"],
        "part_delay_distribution_s": summary["part_delay_distribution_s"],
        "canary_part_delay_s": summary["canary"]["part_delay_s"],
        "canary_part_delay_distribution_s": summary["canary"]["part_delay_distribution_s"],
        "time_to_first_part_s": summary["time_to_first_part_s"],
        "client_cpu": summary["client_cpu"],
        "client_saturated": summary["client_saturated"],
        # Over the whole step, ramp and start included: every listener request the edge
        # answered (canary too) against the CPU time it spent.
        "edge_cpu_seconds": round(cpu["edge"], 2),
        "origin_cpu_seconds": round(cpu["origin"], 2),
        "edge_requests_per_cpu_second": round(served / max(cpu["edge"], 1e-3)),
    }


def run(steps: list[int], seconds: float, results: Path | None = RESULTS) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="offload-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        o_port, e_port = free_port(), free_port()
        origin = stack.enter_context(running(
            ["origin", "--demo", ROOM, "--port", str(o_port), "--data", str(work / "data")],
            work / "origin.log", f"http://127.0.0.1:{o_port}/healthz"))
        origin_url = f"http://127.0.0.1:{o_port}"
        wait_live(origin_url, ROOM)
        edge = stack.enter_context(running(
            ["edge", "--upstream", origin_url, "--port", str(e_port)], work / "edge.log",
            f"http://127.0.0.1:{e_port}/healthz"))
        for svc in (origin, edge):
            _pin(svc.proc.pid)
        edge_url = f"http://127.0.0.1:{e_port}"
        pids = {"origin": origin.proc.pid, "edge": edge.proc.pid}
        rows = [_step(edge_url, origin_url, n, seconds, work, pids) for n in steps]
    rates = [r["origin_requests_per_s"] for r in rows]
    result = {
        "command": f"python -m tests.bench.offload  (steps {steps}, {seconds:g} s each)",
        "cpus": (f"origin and edge on CPU {SERVER_CPU}, load generator on CPU {LOAD_CPU}"
                 if PINNED else "unpinned"),
        "steps": rows,
        "largest_over_smallest": round(max(rates) / max(min(rates), 1e-9), 3),
        "target_largest_over_smallest": 1.05,
    }
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    steps = [int(s) for s in os.environ.get("BENCH_OFFLOAD_STEPS", "10,100,1000,3000").split(",")]
    seconds = float(os.environ.get("BENCH_OFFLOAD_SECONDS", "20"))
    print(json.dumps(run(steps, seconds), indent=2))


if __name__ == "__main__":
    main()
