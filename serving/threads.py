"""CPU seconds by kind of thread, for Prometheus: which part of a service spends its CPU.

`process_cpu_seconds_total` says how much a process spends; this says where: the event
loop, the encoders, the store's writers. It reads `/proc/self/task` when scraped (Linux;
elsewhere it yields nothing) and tells threads apart by the names the code gives them
(`ThreadPoolExecutor` prefixes). Threads Python does not know (uvloop's, a codec's) count
as "other". A thread that ends leaves its last reading in its kind's total, so the counters
never go back. Written here because prometheus-client's own process collector has no
per-thread view, and the kinds are this project's.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# A thread's kind, by the start of its name; the first match wins.
KINDS = (("MainThread", "loop"), ("encode", "encode"), ("townsquare-folder", "store"),
         ("townsquare-s3", "store"), ("townsquare-spill", "spill"))
OTHER = "other"
_TASKS = "/proc/self/task"
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def kind_of(name: str) -> str:
    return next((kind for prefix, kind in KINDS if name.startswith(prefix)), OTHER)


def stat_cpu_seconds(path: str) -> float:
    """User + system CPU seconds in a `/proc` stat file: a process's (every thread) or one
    thread's. OSError once it has gone."""
    with open(path, "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


class ThreadCpuCollector(Collector):
    """`townsquare_thread_cpu_seconds_total{thread=KIND}`, read at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[int, tuple[str, float]] = {}  # thread id: kind, last reading
        self._ended: dict[str, float] = {}  # kind: CPU of its threads that have ended

    def totals(self) -> dict[str, float]:
        """CPU seconds so far by kind, every kind present (0 for one with no thread)."""
        try:
            tids = [int(t) for t in os.listdir(_TASKS)]
        except OSError:
            return {}
        names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        with self._lock:
            now: dict[int, tuple[str, float]] = {}
            for tid in tids:
                try:
                    cpu = stat_cpu_seconds(f"{_TASKS}/{tid}/stat")
                except OSError:
                    continue  # ended since the listing
                now[tid] = (kind_of(names.get(tid, "")), cpu)
            for tid, (kind, cpu) in self._seen.items():
                # Gone, or its id taken by a new thread (whose reading starts again at 0).
                if tid not in now or now[tid][0] != kind or now[tid][1] < cpu:
                    self._ended[kind] = self._ended.get(kind, 0.0) + cpu
            self._seen = now
            totals = {kind: 0.0 for _, kind in KINDS} | {OTHER: 0.0}
            for kind, cpu in self._ended.items():
                totals[kind] += cpu
            for kind, cpu in now.values():
                totals[kind] += cpu
        return totals

    def collect(self) -> Iterator[CounterMetricFamily]:
        totals = self.totals()
        if not totals:
            return
        family = CounterMetricFamily(
            "townsquare_thread_cpu_seconds",
            "CPU seconds (user + system) of this process's threads, by kind: the event loop, "
            "encoders, store writers, the spill writer, others", labels=["thread"])
        for kind, cpu in sorted(totals.items()):
            family.add_metric([kind], cpu)
        yield family
