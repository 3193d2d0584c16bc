"""Edge benchmarks, on demand: `python -m tests.bench.edge` (results in results/edge.json).

1. Blocking fan-out: 5 000 held requests for the next part; time from the part's arrival at the
   edge to each response (p50/p99).
2. Cache-hit throughput: wrk against the edge and against nginx (Debian nginx-light as a caching
   proxy with proxy_cache_lock, as configured here and once more with open_file_cache), one
   worker each, the same part, the same response header lines. Pinned (each server on CPU 1, wrk
   on CPU 0) and unpinned, the runs of each mode interleaved; ratios of medians. Beside each run
   the server's CPU time per request, which a busy machine disturbs less than requests/s, and
   wrk's own CPU share (near 1: the load generator set the pace, not the server).

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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path

import httpx

from tests.edge.conftest import media_path, next_part, wait_live
from tests.support.procs import cpu_seconds, free_port, process_tree, running, wait_http

ROOM = "bench"
RESULTS = Path(__file__).parent / "results" / "edge.json"
WRK_SECONDS = int(os.environ.get("BENCH_WRK_SECONDS", "10"))
WRK_CONNECTIONS = 64
FANOUT = 5000

# The reference: nginx as the issue names it, a caching proxy with proxy_cache_lock, one worker.
# The origin's own CORS headers pass through, so its answer carries the same header lines as the
# edge's (no add_header, which would repeat them). {tuning} is where the second configuration
# adds open_file_cache: nginx then keeps the cache file open between hits instead of opening,
# statting and closing it on every one, the tuning an operator would reach for first.
NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    server_tokens off;{tuning}
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
        }}
    }}
}}
"""
NGINX_TUNINGS = {
    "nginx": "",
    "nginx_open_file_cache": "\n    open_file_cache max=1000 inactive=60s;\n    open_file_cache_valid 60s;",
}

# Pinned: the server under test on CPU 1, wrk on CPU 0, so that the scheduler's choices do not
# decide which of the two gets more of the machine. Unpinned: both may run anywhere, as on a
# machine nobody tuned. Each mode is measured when the machine has the CPUs for it.
PINNED = (os.cpu_count() or 1) >= 2
SERVER_CPU, LOAD_CPU = "1", "0"
ALL_CPUS = f"0-{(os.cpu_count() or 1) - 1}"
MODES = ("pinned", "unpinned") if PINNED else ("unpinned",)
RUNS = int(os.environ.get("BENCH_EDGE_RUNS", "5"))


def pin(pid: int, cpu: str = SERVER_CPU) -> None:
    """Put every thread of `pid` (and of the children it will fork) on `cpu`."""
    if PINNED:
        subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(pid)], check=True,
                       capture_output=True)


def wrk(url: str, pinned: bool, server_pid: int, seconds: int = WRK_SECONDS) -> dict[str, float]:
    """One wrk run; with the server's CPU time per request and wrk's own share of a CPU (near 1
    means the load generator, not the server, set the pace)."""
    prefix = ["taskset", "-c", LOAD_CPU] if pinned else []
    server_before, started = cpu_seconds(process_tree(server_pid)), time.monotonic()
    proc = subprocess.Popen(
        [*prefix, "wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency", url],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    server_cpu = cpu_seconds(process_tree(server_pid)) - server_before
    assert proc.returncode == 0, out
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                              r"timeout (\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return {"requests_per_second": rps,
            "non_2xx": float(errors[1]) if errors else 0.0,
            "socket_errors": float(sum(int(g) for g in socket_errors.groups()))
            if socket_errors else 0.0,
            "p99_ms": float(p99[1]) * scale[p99[2]] if p99 else -1.0,
            "server_cpu_us_per_request": round(server_cpu / max(rps * wall, 1.0) * 1e6, 2),
            "server_cpu_share": round(server_cpu / wall, 3),
            "wrk_cpu_share": round((usage.ru_utime + usage.ru_stime) / wall, 3)}


def raw_get(port: int, path: str) -> bytes:
    """The whole response, head and body, to the request wrk sends (GET with a Host line)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", head)[1])  # type: ignore[index]
        while len(body) < length:
            body += s.recv(65536)
        return head + b"\r\n\r\n" + body


def _start_nginx(name: str, origin_url: str, work: Path) -> tuple[subprocess.Popen[bytes], int,
                                                                    str]:
    d = work / name
    for sub in ("cache", "tmp", "body"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    # As root, nginx's worker would drop to nobody and lose access to the private temp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = NGINX_CONF.format(d=d, origin=origin_url.rsplit(":", 1)[1], port=port, user=user,
                             tuning=NGINX_TUNINGS[name])
    (d / "nginx.conf").write_text(conf)
    with open(d / "out.log", "wb") as log:
        proc = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c",
                                 str(d / "nginx.conf"), "-p", str(d)],
                                stderr=subprocess.STDOUT, stdout=log)
    return proc, port, conf.replace(str(d), "$WORK").strip()


def _summary(got: dict[str, list[dict[str, float]]], key: str) -> dict[str, float]:
    return {k: round(statistics.median(r[key] for r in v), 2) for k, v in got.items()}


def throughput(origin_url: str, edge: subprocess.Popen[bytes], edge_port: int, part: str,
               work: Path, runs: int = RUNS, seconds: int = WRK_SECONDS) -> dict[str, object]:
    """wrk against the edge and against nginx (two configurations), one worker each, the same
    cached part: each mode's runs interleaved (townsquare, nginx, nginx tuned, townsquare, ...),
    ratios of their medians."""
    servers: dict[str, tuple[int, int]] = {"townsquare": (edge.pid, edge_port)}
    confs: dict[str, str] = {}
    nginxes: list[subprocess.Popen[bytes]] = []
    result: dict[str, object] = {}
    try:
        for name in NGINX_TUNINGS:
            proc, port, conf = _start_nginx(name, origin_url, work)
            nginxes.append(proc)
            servers[name], confs[name] = (proc.pid, port), conf
            wait_http(f"http://127.0.0.1:{port}{part}", 10, proc)
        answers = {}
        for name, (_, port) in servers.items():  # every cache warm, and checked to hit
            for _ in range(3):
                assert httpx.get(f"http://127.0.0.1:{port}{part}").status_code == 200
            answers[name] = raw_get(port, part)
        body = answers["townsquare"].partition(b"\r\n\r\n")[2]
        for name, answer in answers.items():
            assert answer.partition(b"\r\n\r\n")[2] == body, f"{name}: not the same object"
        result.update({
            "object": part, "object_bytes": len(body),
            "response_bytes": {k: len(v) for k, v in answers.items()},
            "response_heads": {k: v[:-len(body)].decode() for k, v in answers.items()},
            "wrk": f"wrk -t1 -c{WRK_CONNECTIONS} -d{seconds}s --latency (one thread, keep-alive)",
            "runs_per_server_and_mode": runs,
            "servers": {
                "townsquare": "townsquare edge with default settings: one process, one uvloop "
                              "event loop, answers held in memory as response bytes",
                "nginx": f"nginx {_nginx_version()} (Debian nginx-light), worker_processes 1, "
                         "proxy_cache on a cache path in the page cache, proxy_cache_lock on: "
                         "the reference the target is set against",
                "nginx_open_file_cache": "the same with open_file_cache: a stronger reference "
                                         "(cache files stay open between hits)",
            },
            "nginx_conf": confs,
        })
        for mode in MODES:
            pinned = mode == "pinned"
            for pid, _ in servers.values():
                for p in process_tree(pid):
                    subprocess.run(["taskset", "-a", "-p", "-c",
                                    SERVER_CPU if pinned else ALL_CPUS, str(p)],
                                   check=True, capture_output=True)
            got: dict[str, list[dict[str, float]]] = {k: [] for k in servers}
            for _ in range(runs):  # interleaved so that drift in machine load hits all alike
                for name, (pid, port) in servers.items():
                    got[name].append(wrk(f"http://127.0.0.1:{port}{part}", pinned, pid,
                                         seconds))
            median = _summary(got, "requests_per_second")
            cost = _summary(got, "server_cpu_us_per_request")
            result[mode] = {
                "cpus": (f"each server on CPU {SERVER_CPU} (taskset, all threads), wrk on CPU "
                         f"{LOAD_CPU}" if pinned else
                         f"servers and wrk unpinned (CPUs {ALL_CPUS} for all)"),
                "runs": got,
                "median_rps": median,
                "ratio_townsquare_over_nginx": round(median["townsquare"] / median["nginx"], 2),
                "target_ratio": 1.5,
                "ratio_townsquare_over_nginx_open_file_cache": round(
                    median["townsquare"] / median["nginx_open_file_cache"], 2),
                "median_server_cpu_us_per_request": cost,
                "cpu_per_request_nginx_over_townsquare": round(
                    cost["nginx"] / cost["townsquare"], 2),
                "cpu_per_request_nginx_open_file_cache_over_townsquare": round(
                    cost["nginx_open_file_cache"] / cost["townsquare"], 2),
                "median_wrk_cpu_share": _summary(got, "wrk_cpu_share"),
                "errors": sum(r["non_2xx"] + r["socket_errors"] for v in got.values() for r in v),
            }
            print(mode, json.dumps(median), json.dumps(cost), flush=True)
    finally:
        for proc in nginxes:
            proc.terminate()
            proc.wait(10)
        pin(edge.pid)  # back where the rest of the benchmark expects it
    return result


def _nginx_version() -> str:
    out = subprocess.run([shutil.which("nginx") or "/usr/sbin/nginx", "-v"], check=False,
                         capture_output=True, text=True).stderr
    return out.strip().rsplit("/", 1)[-1]


def _hold(port: int, target: str, n: int, ready: multiprocessing.Queue[object],
          go: MpEvent, out: multiprocessing.Queue[object]) -> None:
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


def fanout(origin_url: str, edge_url: str, edge_port: int, held: int = FANOUT,
           processes: int = 2) -> dict[str, object]:
    playlist = media_path(origin_url, ROOM)
    httpx.get(edge_url + playlist)
    msn, part, _ = next_part(origin_url, playlist)
    # Three parts past the hinted one (≥ 640 ms away): every request is in and held before
    # the part appears, so the edge releases all of them at once.
    ahead = part + 3
    target = f"{playlist}?_HLS_msn={msn}&_HLS_part={ahead}"
    ctx = multiprocessing.get_context("fork")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    per = held // processes
    procs = [ctx.Process(target=_hold, args=(edge_port, target, per, ready, go, out))
             for _ in range(processes)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    sent = time.monotonic()
    go.set()
    times = sorted(t for _ in procs for t in out.get(timeout=60))
    for p in procs:
        p.join(10)
    metrics = httpx.get(edge_url + "/metrics").text
    waiters = float(re.search(r"^townsquare_edge_last_fanout_waiters (\S+)$", metrics,
                              re.MULTILINE)[1])  # type: ignore[index]
    write_s = float(re.search(r"^townsquare_edge_last_fanout_seconds (\S+)$", metrics,
                              re.MULTILINE)[1])  # type: ignore[index]
    first = times[0]  # the first answer received stands for the part's arrival at the edge
    since = [(t - first) * 1000 for t in times]
    q = statistics.quantiles(since, n=100)
    return {
        "held_requests": len(times), "target": target,
        "held_for_ms": round((first - sent) * 1000, 1),
        "arrival_to_response_ms": {"p50": round(q[49], 2), "p99": round(q[98], 2),
                                   "max": round(since[-1], 2)},
        "edge_write_all_ms": round(write_s * 1000, 2), "edge_fanout_waiters": waiters,
        "all_held": waiters >= per * processes,
        "target_p99_ms": 100,
    }


def run(runs: int = RUNS, seconds: int = WRK_SECONDS, held: int = FANOUT,
        results: Path | None = RESULTS) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    data = work / "data"
    origin_port, edge_port = free_port(), free_port()
    origin_url, edge_url = f"http://127.0.0.1:{origin_port}", f"http://127.0.0.1:{edge_port}"
    out: dict[str, object] = {"command": "python -m tests.bench.edge",
                              "machine": {"cpus": os.cpu_count(),
                                          "python": sys.version.split()[0]}}
    with ExitStack() as stack:
        ingest = stack.enter_context(running(
            ["ingest", "--room", ROOM, "--source", "tone", "--data", str(data)],
            work / "ingest.log", None))
        origin = stack.enter_context(running(
            ["origin", "--port", str(origin_port), "--data", str(data)],
            work / "origin.log", origin_url + "/healthz"))
        edge = stack.enter_context(running(
            ["edge", "--upstream", origin_url, "--port", str(edge_port)],
            work / "edge.log", edge_url + "/healthz"))
        # The edge gets a CPU to itself; broadcast, origin and load generators share the other.
        pin(edge.proc.pid)
        pin(ingest.proc.pid, LOAD_CPU)
        pin(origin.proc.pid, LOAD_CPU)
        wait_live(origin_url, ROOM)
        time.sleep(3)
        out["fanout"] = fanout(origin_url, edge_url, edge_port, held)
        print(json.dumps(out["fanout"], indent=2))
        playlist = media_path(origin_url, ROOM)
        folder = playlist.rsplit("/", 1)[0]
        text = httpx.get(origin_url + playlist).text
        parts = re.findall(r'URI="((?:[^"/]+/)?p\d+\.\d+\.m4s)"', text)
        part = f"{folder}/{parts[-3]}"
        httpx.get(edge_url + part)
        ingest.stop()  # quiet machine for the throughput runs; parts stay cached and on disk
        out["throughput"] = throughput(origin_url, edge.proc, edge_port, part, work, runs,
                                       seconds)
        print(json.dumps(out["throughput"], indent=2))
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(out, indent=2) + "\n")
        print(f"results in {results}")
    return out


def main() -> None:
    run()


if __name__ == "__main__":
    main()
