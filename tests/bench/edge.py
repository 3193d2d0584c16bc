"""Edge benchmarks, on demand: `python -m tests.bench.edge` (results in results/edge.json).

1. Cache-hit throughput: wrk against the edge and against nginx (Debian nginx-light, caching
   proxy with proxy_cache_lock on), one worker each, same part, same run.
2. Blocking fan-out: 5 000 held requests for the next part; time from the part's arrival at the
   edge to each response (p50/p99).

Both use the real ingest + origin; the broadcast is stopped before the throughput runs so that
its encoder does not compete for the two cores.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from tests.edge.conftest import media_path, next_part, wait_live
from tests.support.procs import free_port, running, wait_http

ROOM = "bench"
RESULTS = Path(__file__).parent / "results" / "edge.json"
WRK_SECONDS = int(os.environ.get("BENCH_WRK_SECONDS", "10"))
WRK_CONNECTIONS = 64
FANOUT = 5000

NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=edge:10m max_size=256m inactive=10m;
    proxy_temp_path {d}/tmp;
    client_body_temp_path {d}/body;
    upstream origin {{ server 127.0.0.1:{origin}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache edge;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 10s;
            proxy_cache_key $uri$arg__HLS_msn$arg__HLS_part$arg__HLS_skip;
            proxy_cache_valid 200 12s;
            add_header Access-Control-Allow-Origin * always;
            add_header Access-Control-Expose-Headers Age always;
        }}
    }}
}}
"""


# With two or more CPUs the server under test runs on CPU 1 and wrk on CPU 0, so that the
# scheduler's choices do not decide which of the two gets more of the machine.
PINNED = (os.cpu_count() or 1) >= 2
SERVER_CPU, LOAD_CPU = "1", "0"


def pin(pid: int, cpu: str = SERVER_CPU) -> None:
    """Put every thread of `pid` (and of the children it will fork) on `cpu`."""
    if PINNED:
        subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(pid)], check=True,
                       capture_output=True)


def wrk(url: str) -> dict[str, float]:
    prefix = ["taskset", "-c", LOAD_CPU] if PINNED else []
    out = subprocess.run(
        [*prefix, "wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{WRK_SECONDS}s", "--latency", url],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return {"requests_per_second": rps, "non_2xx": float(errors[1]) if errors else 0.0,
            "p99_ms": float(p99[1]) * scale[p99[2]] if p99 else -1.0}


def throughput(origin_url: str, edge_url: str, part: str, work: Path) -> dict[str, object]:
    nginx_dir = work / "nginx"
    for sub in ("cache", "tmp", "body"):
        (nginx_dir / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = nginx_dir / "nginx.conf"
    # As root, nginx's worker would drop to nobody and lose access to the private temp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_CONF.format(d=nginx_dir, origin=origin_url.rsplit(":", 1)[1],
                                      port=port, user=user))
    nginx_cmd = ["taskset", "-c", SERVER_CPU] if PINNED else []
    nginx = subprocess.Popen([*nginx_cmd, shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf),
                              "-p", str(nginx_dir)], stderr=subprocess.STDOUT,
                             stdout=open(nginx_dir / "out.log", "wb"))
    try:
        nginx_url = f"http://127.0.0.1:{port}"
        wait_http(nginx_url + part, 10, nginx)
        size = len(httpx.get(edge_url + part).content)
        for base in (nginx_url, edge_url):  # both caches warm, and checked to hit
            for _ in range(3):
                assert httpx.get(base + part).status_code == 200
        runs: dict[str, list[dict[str, float]]] = {"townsquare": [], "nginx": []}
        for _ in range(3):  # interleaved so that drift in machine load hits both
            runs["nginx"].append(wrk(nginx_url + part))
            runs["townsquare"].append(wrk(edge_url + part))
    finally:
        nginx.terminate()
        nginx.wait(10)
    best = {k: max(r["requests_per_second"] for r in v) for k, v in runs.items()}
    median = {k: statistics.median(r["requests_per_second"] for r in v) for k, v in runs.items()}
    return {
        "object": part, "object_bytes": size, "wrk": f"-t1 -c{WRK_CONNECTIONS} -d{WRK_SECONDS}s",
        "cpus": f"server on CPU {SERVER_CPU}, wrk on CPU {LOAD_CPU}" if PINNED else "unpinned",
        "runs": runs, "best_rps": best,
        "median_rps": median,
        "ratio_townsquare_over_nginx": round(median["townsquare"] / median["nginx"], 2),
        "ratio_of_best_runs": round(best["townsquare"] / best["nginx"], 2),
        "target_ratio": 1.5,
    }


def _hold(port: int, target: str, n: int, ready: multiprocessing.Queue[object],
          go: multiprocessing.Event, out: multiprocessing.Queue[object]) -> None:
    """One client process: open n connections, send on `go`, note each answer's arrival."""
    import uvloop

    if PINNED:  # the load generator stays off the edge's CPU
        os.sched_setaffinity(0, {int(LOAD_CPU)})

    async def main() -> list[float]:
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]
        ready.put(n)
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        # As hls.js in a browser asks: the playlist compressed.
        req = (f"GET {target} HTTP/1.1\r\nHost: edge\r\n"
               "Accept-Encoding: gzip, deflate, br\r\n\r\n").encode()
        for _, w in conns:
            w.write(req)

        async def one(r: asyncio.StreamReader) -> float:
            head = await r.readuntil(b"\r\n\r\n")
            t = time.monotonic()
            assert head.startswith(b"HTTP/1.1 200"), head[:40]
            length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
            await r.readexactly(length)
            return t

        times = await asyncio.gather(*(one(r) for r, _ in conns))
        for _, w in conns:
            w.close()
        return list(times)

    out.put(uvloop.run(main()))


def fanout(origin_url: str, edge_url: str, edge_port: int, processes: int = 2) -> dict[str, object]:
    playlist = media_path(origin_url, ROOM)
    httpx.get(edge_url + playlist)
    msn, part, _ = next_part(origin_url, playlist)
    # Three parts past the hinted one (≥ 640 ms away): every request is in and held before
    # the part appears, so the edge releases all of them at once.
    ahead = part + 3
    target = f"{playlist}?_HLS_msn={msn}&_HLS_part={ahead}"
    ctx = multiprocessing.get_context("fork")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    per = FANOUT // processes
    procs = [ctx.Process(target=_hold, args=(edge_port, target, per, ready, go, out))
             for _ in range(processes)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    sent = time.monotonic()
    go.set()
    times = sorted(t for _ in procs for t in out.get(timeout=60))  # type: ignore[union-attr]
    for p in procs:
        p.join(10)
    metrics = httpx.get(edge_url + "/metrics").text
    waiters = float(re.search(r"^townsquare_edge_last_fanout_waiters (\S+)$", metrics, re.M)[1])  # type: ignore[index]
    write_s = float(re.search(r"^townsquare_edge_last_fanout_seconds (\S+)$", metrics, re.M)[1])  # type: ignore[index]
    first = times[0]  # the first answer received stands for the part's arrival at the edge
    since = [(t - first) * 1000 for t in times]
    q = statistics.quantiles(since, n=100)
    return {
        "held_requests": len(times), "target": target,
        "held_for_ms": round((first - sent) * 1000, 1),
        "arrival_to_response_ms": {"p50": round(q[49], 2), "p99": round(q[98], 2),
                                   "max": round(since[-1], 2)},
        "edge_write_all_ms": round(write_s * 1000, 2), "edge_fanout_waiters": waiters,
        "all_held": waiters >= FANOUT,
        "target_p99_ms": 100,
    }


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    data = work / "data"
    origin_port, edge_port = free_port(), free_port()
    origin_url, edge_url = f"http://127.0.0.1:{origin_port}", f"http://127.0.0.1:{edge_port}"
    results: dict[str, object] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    with ExitStack() as stack:
        ingest = stack.enter_context(running(
            ["ingest", "--room", ROOM, "--source", "tone", "--data", str(data)],
            work / "ingest.log", None))
        origin = stack.enter_context(running(["origin", "--port", str(origin_port), "--data", str(data)],
                                    work / "origin.log", origin_url + "/healthz"))
        edge = stack.enter_context(running(["edge", "--upstream", origin_url, "--port", str(edge_port)],
                                    work / "edge.log", edge_url + "/healthz"))
        # The edge gets a CPU to itself; broadcast, origin and load generators share the other.
        pin(edge.proc.pid)
        pin(ingest.proc.pid, LOAD_CPU)
        pin(origin.proc.pid, LOAD_CPU)
        wait_live(origin_url, ROOM)
        time.sleep(3)
        results["fanout"] = fanout(origin_url, edge_url, edge_port)
        print(json.dumps(results["fanout"], indent=2))
        playlist = media_path(origin_url, ROOM)
        folder = playlist.rsplit("/", 1)[0]
        text = httpx.get(origin_url + playlist).text
        parts = re.findall(r'URI="(p\d+\.\d+\.m4s)"', text)
        part = f"{folder}/{parts[-3]}"
        httpx.get(edge_url + part)
        ingest.stop()  # quiet machine for the throughput runs; parts stay cached and on disk
        results["throughput"] = throughput(origin_url, edge_url, part, work)
        print(json.dumps(results["throughput"], indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results in {RESULTS}")


if __name__ == "__main__":
    main()
