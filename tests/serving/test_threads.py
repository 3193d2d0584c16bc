"""CPU seconds by kind of thread, read from this process's own /proc/self/task."""

from __future__ import annotations

import threading
import time

from serving.threads import KINDS, OTHER, ThreadCpuCollector, kind_of


def _burn(seconds: float, started: threading.Event, release: threading.Event) -> None:
    while time.thread_time() < seconds:
        pass
    started.set()
    release.wait(10)


def test_threads_are_told_apart_by_the_names_the_code_gives_them() -> None:
    assert kind_of("MainThread") == "loop"
    assert kind_of("encode_0") == "encode"
    assert kind_of("townsquare-folder_3") == kind_of("townsquare-s3_0") == "store"
    assert kind_of("townsquare-spill_0") == "spill"
    assert kind_of("asyncio_0") == kind_of("") == OTHER


def test_an_encoders_cpu_is_counted_under_encode_and_stays_after_the_thread_ends() -> None:
    collector = ThreadCpuCollector()
    before = collector.totals()
    assert set(before) == {kind for _, kind in KINDS} | {OTHER}
    started, release = threading.Event(), threading.Event()
    worker = threading.Thread(target=_burn, args=(0.3, started, release), name="encode_0")
    worker.start()
    assert started.wait(10)
    during = collector.totals()
    release.set()
    worker.join()
    after = collector.totals()
    # The burn was 0.3 s of the worker's own CPU, read at the clock's tick (1/100 s).
    assert during["encode"] - before["encode"] >= 0.28
    assert after["encode"] >= during["encode"]  # an ended thread's CPU stays in its kind
    assert all(after[k] >= before[k] for k in before)  # counters never go back
    family = next(iter(collector.collect()))
    assert family.name == "townsquare_thread_cpu_seconds"
    assert {s.labels["thread"] for s in family.samples} == set(after)
