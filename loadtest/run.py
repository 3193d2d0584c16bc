"""Worker processes, a canary, the live display and the JSON summary of a load test.

Each worker process runs its share of the listeners on its own event loop (uvloop when
installed) and sends what they saw once a second. The canary is a handful of listeners in a
process of their own: its event loop is never busy, so its part delays are the server's.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import queue
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Event as MpEvent
from typing import Any
from urllib.parse import urlsplit

from loadtest.listener import Listener
from loadtest.playlist import read_shared
from loadtest.stats import Tally

REPORT_EVERY = 1.0


class LoadTestError(ValueError):
    """A load test that cannot start: a bad URL or impossible numbers."""


@dataclass(frozen=True)
class Plan:
    url: str
    listeners: int
    ramp: float
    duration: float
    processes: int
    canary: int

    @property
    def total_seconds(self) -> float:
        return self.ramp + self.duration


def check(plan: Plan) -> tuple[str, int, str]:
    """(host, port, path) of the master playlist, or LoadTestError."""
    parts = urlsplit(plan.url)
    if parts.scheme != "http" or not parts.hostname or not parts.path.endswith(".m3u8"):
        raise LoadTestError(f"--url must be an http:// URL of a multivariant playlist, "
                            f"not {plan.url!r}")
    if plan.listeners < 1 or plan.processes < 1 or plan.canary < 0:
        raise LoadTestError("--listeners and --processes must be at least 1, --canary at least 0")
    if plan.ramp < 0 or plan.duration <= 0:
        raise LoadTestError("--ramp must be ≥ 0 and --duration > 0")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, parts.port or 80, path


def _worker(group: str, numbers: list[int], plan: Plan, out: Any, stop: MpEvent) -> None:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_group(group, numbers, plan, out, stop))


async def _group(group: str, numbers: list[int], plan: Plan, out: Any, stop: MpEvent) -> None:
    host, port, path = check(plan)
    tally = Tally()
    halt = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    cpu = time.process_time()

    scanned = read_shared.cache_info().misses

    def report(final: bool = False) -> None:
        nonlocal tally, cpu, scanned
        now_cpu = time.process_time()
        tally.cpu_seconds, cpu = now_cpu - cpu, now_cpu
        now_scanned = read_shared.cache_info().misses
        tally.playlists_scanned, scanned = now_scanned - scanned, now_scanned
        tally.wall_seconds = time.monotonic() - started
        tally.listeners = sum(1 for t in tasks if not t.done())
        out.put((group, os.getpid(), final, tally))
        tally = Tally()
        for listener in listeners:
            listener.tally = tally

    listeners = [Listener(n, host, port, path, tally) for n in numbers]
    end = started + plan.total_seconds
    next_report = started + REPORT_EVERY
    for i, listener in enumerate(listeners):
        # Listener n of N starts at ramp × n / N, whichever process holds it.
        at = started + plan.ramp * listener.number / max(1, plan.listeners)
        while time.monotonic() < at and not stop.is_set():
            await asyncio.sleep(min(0.05, at - time.monotonic()))
            if time.monotonic() >= next_report:
                report()
                next_report += REPORT_EVERY
        if stop.is_set():
            break
        tasks.append(asyncio.create_task(listener.run(halt)))
    while time.monotonic() < end and not stop.is_set():
        await asyncio.sleep(max(0.0, min(next_report, end) - time.monotonic()))
        if time.monotonic() >= next_report:
            report()
            next_report += REPORT_EVERY
    halt.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    report(final=True)


@dataclass
class Progress:
    """The running totals the parent keeps, per group, and the last second's rates."""

    main: Tally
    canary: Tally
    last_second: Tally
    cpu: dict[int, float]        # pid → CPU seconds
    wall: dict[int, float]       # pid → wall seconds
    groups: dict[int, str]       # pid → group
    rates: list[float]           # requests per second, one entry per report round
    finished: set[int]


def run(plan: Plan, show: bool = True) -> dict[str, Any]:
    """Run the load test; returns the summary (also printed as JSON by the command line)."""
    check(plan)
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue(maxsize=10_000)
    stop = ctx.Event()
    numbers = list(range(plan.listeners))
    procs = []
    for p in range(plan.processes):
        mine = numbers[p::plan.processes]
        if mine:
            procs.append(ctx.Process(target=_worker, args=("main", mine, plan, out, stop),
                                     daemon=True))
    if plan.canary:
        # Canary listeners carry numbers past the main group's, so renditions spread the same.
        canary = list(range(plan.listeners, plan.listeners + plan.canary))
        canary_plan = Plan(plan.url, plan.listeners, 0.0, plan.total_seconds, 1, 0)
        procs.append(ctx.Process(target=_worker, args=("canary", canary, canary_plan, out, stop),
                                 daemon=True))
    prog = Progress(Tally(), Tally(), Tally(), {}, {}, {}, [], set())
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + plan.total_seconds + 30
    display = _Display(plan, prog) if show else None
    try:
        if display is not None:
            display.start()
        round_tally, round_started = Tally(), time.monotonic()
        while len(prog.finished) < len(procs) and time.monotonic() < deadline:
            try:
                group, pid, final, tally = out.get(timeout=0.5)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    break
                continue
            prog.groups[pid] = group
            prog.cpu[pid] = prog.cpu.get(pid, 0.0) + tally.cpu_seconds
            prog.wall[pid] = tally.wall_seconds
            (prog.canary if group == "canary" else prog.main).merge(tally)
            if group == "main":
                round_tally.merge(tally)
            if final:
                prog.finished.add(pid)
            if time.monotonic() - round_started >= REPORT_EVERY:
                elapsed = time.monotonic() - round_started
                prog.rates.append(sum(round_tally.requests.values()) / elapsed)
                prog.last_second = round_tally
                round_tally, round_started = Tally(), time.monotonic()
                if display is not None:
                    display.update()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        if display is not None:
            display.stop()
    return summary(plan, prog)


def summary(plan: Plan, prog: Progress) -> dict[str, Any]:
    main, canary = prog.main, prog.canary
    seconds = plan.total_seconds
    steady = prog.rates[int(plan.ramp) + 1:] or prog.rates
    shares = {pid: c / max(prog.wall.get(pid, seconds), 1e-3) for pid, c in prog.cpu.items()}
    cpu = {str(pid): {"group": prog.groups.get(pid, "?"), "cpu_seconds": round(c, 2),
                      "cpu_share": round(shares[pid], 3)}
           for pid, c in prog.cpu.items()}
    main_p99 = main.part_delay.quantile(0.99)
    canary_p99 = canary.part_delay.quantile(0.99)
    busiest = max((v for pid, v in shares.items() if prog.groups.get(pid) == "main"),
                  default=0.0)
    return {
        "url": plan.url, "listeners": plan.listeners, "processes": plan.processes,
        "canary_listeners": plan.canary, "ramp_s": plan.ramp, "duration_s": plan.duration,
        "requests": dict(main.requests), "errors": dict(main.errors),
        # Playlists answered, and how many distinct texts among them the listeners scanned.
        "playlists_scanned": main.playlists_scanned,
        "requests_per_s_steady_median": round(_median(steady), 1) if steady else None,
        "parts": main.parts, "bytes": main.bytes,
        "part_delay_s": main.part_delay.summary(),
        "part_delay_distribution_s": main.part_delay.distribution(),
        "time_to_first_part_s": main.first_part.summary(),
        "canary": {"requests": dict(canary.requests), "errors": dict(canary.errors),
                   "part_delay_s": canary.part_delay.summary(),
                   "part_delay_distribution_s": canary.part_delay.distribution(),
                   "time_to_first_part_s": canary.first_part.summary()},
        "client_cpu": cpu,
        # The client is the bottleneck when its own processes are busy, or when its delays
        # run away from the canary's (whose loop is idle).
        "client_saturated": bool(busiest > 0.9 or (
            main_p99 is not None and canary_p99 is not None
            and main_p99 > 2 * canary_p99 + 0.1)),
        "cpus": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


def _median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


class _Display:
    """A live table on the terminal (rich), refreshed once a second."""

    def __init__(self, plan: Plan, prog: Progress) -> None:
        from rich.console import Console
        from rich.live import Live

        self.plan, self.prog = plan, prog
        self.live = Live(self._table(), console=Console(file=sys.stderr), auto_refresh=False)

    def start(self) -> None:
        self.live.start()

    def stop(self) -> None:
        self.live.update(self._table(), refresh=True)
        self.live.stop()

    def update(self) -> None:
        self.live.update(self._table(), refresh=True)

    def _table(self) -> Any:
        from rich.table import Table

        p = self.prog
        last = p.last_second
        t = Table(title=f"townsquare loadtest: {self.plan.url}", show_header=True)
        for col in ("", "listeners", "req/s", "errors", "delay p50", "delay p99", "first part p99",
                    "client CPU"):
            t.add_column(col, justify="right")

        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f} s"

        for name, tally in (("main", p.main), ("canary", p.canary)):
            pids = [pid for pid, g in p.groups.items() if g == name]
            share = max((p.cpu[pid] / max(p.wall.get(pid, 1.0), 1e-3) for pid in pids),
                        default=0.0)
            t.add_row(name, str(last.listeners if name == "main" else tally.listeners),
                      f"{p.rates[-1]:.0f}" if p.rates and name == "main" else "",
                      str(sum(tally.errors.values())), fmt(tally.part_delay.quantile(0.5)),
                      fmt(tally.part_delay.quantile(0.99)), fmt(tally.first_part.quantile(0.99)),
                      f"{share:.0%}")
        return t


def write_summary(result: dict[str, Any], path: str | None) -> None:
    text = json.dumps(result, indent=2)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
    print(text, flush=True)
