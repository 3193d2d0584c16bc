"""Fixtures shared by every test package: an S3-compatible server (moto in server mode).

Also where tests are sorted for `./dev test`: the fault drills and the listener drills measure
gaps in seconds while they kill and restart processes, so they are marked `serial` and run
after everything else has run side by side (pytest-xdist); a busy neighbour would only measure
the machine. `./dev test` runs them in two lanes, each one drill at a time: the drills marked
`browser` (and those marked `first_lane`, in FIRST_LANE below) in one, the others beside
it; then those marked `alone` (in ALONE below) by themselves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.disk import mounted_small_disk
from tests.support.procs import free_port

# Paths (relative to the repository) whose tests are drills, run after the rest in the two
# lanes: they time what a listener heard, or they load the machine.
SERIAL = ("tests/faults/", "tests/edge/test_listener_recovery.py", "tests/edge/test_outage.py",
          "tests/players/",
          # A load generator: its processes would take the CPU a browser test beside them
          # needs (hls.js stalled at its first segment boundary on a busy machine).
          "tests/edge/test_loadtest.py",
          # The latency benchmark's smoke test hears markers through a browser. The other
          # benchmarks' smoke tests check the shape of their results, not their figures, and
          # run side by side, handed out first (below) so that they are done before the
          # browser tests of that phase begin.
          "tests/edge/test_bench_smoke.py::test_latency_benchmark",
          # A minute of encoding on a core; beside the others it lengthened the side-by-side
          # phase by as much as it saved here (at 20 minutes: 96 s there, 64 s here).
          "tests/packager/test_long_broadcast.py")
# Drills that run by themselves even after the rest: the listener page's recoveries, timed
# against hls.js's own restarts, failed beside another drill's load (a step up that never
# played, 27 November) as they had beside the side-by-side phase's.
ALONE = ("tests/edge/test_listener_recovery.py",)
# Drills without a browser that run in the browser lane, to even the lanes: with the long
# broadcast in the other one, that lane took 344 s against the browser lane's 258 s.
FIRST_LANE = ("tests/packager/test_long_broadcast.py",)
# Fault drills that time no listener and load nothing (one in-process service or one
# `townsquare up`, checked for answers, not for gaps): they run side by side with the rest.
NOT_SERIAL = ("tests/faults/test_status_outage.py", "tests/faults/test_database_outage.py",
              "tests/faults/test_disk_full.py")
# The longest files of the side-by-side phase, handed out first (pytest-xdist gives out whole
# files in collection order): started last, one of them would run on alone at the end. The
# benchmarks' smoke tests load the machine and lead; the browser tests come after the others.
LONGEST_FIRST = ("tests/edge/test_bench_smoke.py", "tests/packager/test_s3_store.py",
                 "tests/edge/test_memory.py", "tests/test_types.py",
                 "tests/packager/test_origin_live.py", "tests/ingest/test_rtmp_publish.py",
                 "tests/edge/test_pages.py", "tests/edge/test_browser.py",
                 "tests/ingest/test_whip_browser.py", "tests/test_up.py",
                 "tests/packager/test_tier.py", "tests/packager/test_repair_cli.py",
                 "tests/packager/test_origin_states.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = str(config.rootpath) + os.sep

    def rank(item: pytest.Item) -> int:
        path = str(item.path).removeprefix(root)
        return next((i for i, p in enumerate(LONGEST_FIRST) if path == p), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: a file's tests stay together and in order
    for item in items:
        where = item.nodeid  # the path from the repository, then ::test
        if where.startswith(SERIAL) and not where.startswith(NOT_SERIAL):
            item.add_marker(pytest.mark.serial)
            if where.startswith(ALONE):
                item.add_marker(pytest.mark.alone)
            if where.startswith(FIRST_LANE):
                item.add_marker(pytest.mark.first_lane)


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    port: int
    server: object

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "TOWNSQUARE_S3_BUCKET": self.bucket,
            "TOWNSQUARE_S3_ENDPOINT_URL": self.endpoint,
        }


def start_moto(bucket: str) -> S3Server:
    """moto's S3 on 127.0.0.1 with one bucket; AWS credentials are dummies. Stop it with
    `.server.stop()`; `.server.start()` brings it back on the same port with its objects."""
    from moto.server import ThreadedMotoServer

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(k, v)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = S3Server(f"http://127.0.0.1:{port}", bucket, port, server)
    s3.client().create_bucket(Bucket=s3.bucket)
    return s3


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server for the session, shared by tests that do not stop it."""
    s3 = start_moto("townsquare-test")
    try:
        yield s3
    finally:
        s3.server.stop()  # type: ignore[attr-defined]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs that the test may fill (`tests.support.disk`)."""
    with mounted_small_disk(tmp_path) as mount:
        yield mount
