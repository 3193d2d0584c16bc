"""The process's store writer against moto's S3 server, stopped and started again to make
real outages, and a real spill folder."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from packager.journal import ROLL_BYTES
from packager.settings import StoreSettings
from packager.spill import SpillFolder
from packager.store import LocalStore, S3Store
from packager.writer import StoreWriter, WriterLimits
from tests.conftest import S3Server
from tests.support.procs import free_port


class RecordingS3Store(S3Store):
    """The real S3 backend, noting the order objects landed in and how many were in flight."""

    def __init__(self, s3: S3Server, prefix: str, bucket: str | None = None) -> None:
        super().__init__(bucket or s3.bucket, prefix, s3.endpoint, "us-east-1")
        self.landed: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def put(self, key: str, data: bytes, cache_control: str) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await super().put(key, data, cache_control)
        finally:
            self.in_flight -= 1
        self.landed.append(key)


class Outage:
    """Stops moto's server and starts a fresh one on the same port (buckets survive)."""

    def __init__(self, s3: S3Server) -> None:
        self.s3 = s3
        self.down = False

    def begin(self) -> None:
        self.s3.server.stop()  # type: ignore[attr-defined]
        self.down = True

    def end(self) -> None:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.s3.port, verbose=False)
        server.start()
        self.s3.server = server
        self.down = False


@pytest.fixture
def outage(s3_server: S3Server) -> Iterator[Outage]:
    o = Outage(s3_server)
    try:
        yield o
    finally:
        if o.down:
            o.end()


def limits(tmp_path: Path, *, memory: int = 1 << 20, concurrency: int = 4,
           retry_max: float = 0.3) -> WriterLimits:
    return WriterLimits(memory_bytes=memory, spill_dir=tmp_path / "spill",
                        retry_max_seconds=retry_max, concurrency=concurrency, drain_seconds=20)


def prefix() -> str:
    return f"w-{uuid.uuid4().hex[:10]}"


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def stored(s3: S3Server, key: str, bucket: str | None = None) -> bytes:
    body: bytes = s3.client().get_object(Bucket=bucket or s3.bucket, Key=key)["Body"].read()
    return body


def spill_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.spill")) if folder.exists() else []


def writes(result: str) -> float:
    return REGISTRY.get_sample_value("townsquare_store_writes_total", {"result": result}) or 0.0


async def test_outage_delays_writes_then_live_objects_land_before_the_backlog(
    s3_server: S3Server, outage: Outage, tmp_path: Path
) -> None:
    pre = prefix()
    store = RecordingS3Store(s3_server, pre)
    # One upload at a time, so the order objects land in is the order they were sent.
    writer = StoreWriter(store, limits(tmp_path, concurrency=1))
    writer.start()
    outage.begin()
    for i in range(10):
        writer.put(f"rec/s{i}.m4s", f"segment {i}".encode(), "immutable")
    await until(lambda: not writer.healthy)
    for i in range(5):
        writer.put(f"live/p{i}.m4s", f"part {i}".encode(), "immutable", live=True)
    writer.put("live/live.m3u8", b"old playlist", "max-age=1", live=True)
    writer.put("live/live.m3u8", b"new playlist", "max-age=1", live=True)
    await until(lambda: writer.failures >= 3)  # the store stays down across several probes
    assert writer.pending_objects == 16
    assert writer.last_error is not None and "unreachable" in writer.last_error
    assert store.landed == []

    outage.end()
    assert await writer.drain(20)
    await writer.close()

    live = ["live/p0.m4s", "live/p1.m4s", "live/p2.m4s", "live/p3.m4s", "live/p4.m4s",
            "live/live.m3u8"]
    backlog = [f"rec/s{i}.m4s" for i in range(10)]
    assert store.landed == live + backlog, "live first, then the backlog in written order"
    assert stored(s3_server, f"{pre}/live/live.m3u8") == b"new playlist"
    for i in range(10):
        assert stored(s3_server, f"{pre}/rec/s{i}.m4s") == f"segment {i}".encode()
    assert writer.pending_objects == 0 and writer.healthy
    assert writer.last_error is None
    store.close()


async def test_memory_bound_holds_in_an_outage_and_the_overflow_waits_on_disk(
    s3_server: S3Server, outage: Outage, tmp_path: Path
) -> None:
    pre = prefix()
    bound = 64 * 1024
    store = RecordingS3Store(s3_server, pre)
    writer = StoreWriter(store, limits(tmp_path, memory=bound, concurrency=4))
    writer.start()
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, writer.pending_bytes)
            await asyncio.sleep(0)

    watcher = asyncio.get_running_loop().create_task(watch())
    outage.begin()
    objects = {f"obj/{i:03d}.m4s": bytes([i]) * 4096 for i in range(60)}  # 240 KiB
    for n, (key, data) in enumerate(objects.items()):
        writer.put(key, data, "immutable", live=n % 2 == 0)
        most = max(most, writer.pending_bytes)
    await until(lambda: writer.failures >= 2)

    assert writer.pending_objects == 60
    assert writer.pending_bytes <= bound
    assert writer.spilled_objects >= (240 - 64) // 4
    assert len(spill_files(tmp_path / "spill")) == writer.spilled_objects

    outage.end()
    assert await writer.drain(20)
    watcher.cancel()
    await writer.close()
    assert most <= bound, f"held {most} bytes in memory, bound {bound}"
    assert sorted(store.landed) == sorted(objects)
    for key, data in objects.items():
        assert stored(s3_server, f"{pre}/{key}") == data
    assert writer.spilled_objects == 0
    assert list((tmp_path / "spill").iterdir()) == [], "spill folder empty"
    assert store.most_in_flight <= 4
    store.close()


async def test_drain_deadline_in_an_outage_spills_everything_and_the_next_start_uploads_it(
    s3_server: S3Server, outage: Outage, tmp_path: Path
) -> None:
    pre = prefix()
    store = S3Store(s3_server.bucket, pre, s3_server.endpoint, "us-east-1")
    writer = StoreWriter(store, limits(tmp_path, retry_max=5.0))
    writer.start()
    outage.begin()
    objects = {f"live/r/k{i}.m4s": f"payload {i}".encode() * 100 for i in range(30)}
    for n, (key, data) in enumerate(objects.items()):
        writer.put(key, data, f"max-age={n}", live=n % 3 == 0)
    writes_spilled = writes("spilled")

    started = time.monotonic()
    assert not await writer.drain(1.0)
    assert time.monotonic() - started < 1.0 + 1.5
    assert writer.spilled_objects == writer.pending_objects == 30
    assert len(spill_files(tmp_path / "spill")) == 30
    assert writes("spilled") - writes_spilled == 30
    writer.put("live/r/late.m4s", b"put after the drain began", "immutable")
    started = time.monotonic()
    await writer.close(0.5)
    assert time.monotonic() - started < 0.5 + 1.5
    assert len(spill_files(tmp_path / "spill")) == 31, "close spills what came later too"
    store.close()

    outage.end()
    store = S3Store(s3_server.bucket, pre, s3_server.endpoint, "us-east-1")
    next_run = StoreWriter(store, limits(tmp_path))
    next_run.start()
    next_run.put("live/r/k0.m4s", b"newer than the spilled version", "no-cache")
    assert await next_run.drain(20)
    await next_run.close()

    assert stored(s3_server, f"{pre}/live/r/k0.m4s") == b"newer than the spilled version"
    for n, (key, data) in enumerate(objects.items()):
        if n:
            assert stored(s3_server, f"{pre}/{key}") == data
            head = s3_server.client().head_object(Bucket=s3_server.bucket, Key=f"{pre}/{key}")
            assert head["CacheControl"] == f"max-age={n}"
    assert stored(s3_server, f"{pre}/live/r/late.m4s") == b"put after the drain began"
    assert spill_files(tmp_path / "spill") == []
    store.close()


async def test_wrong_bucket_is_reported_once_and_no_write_is_lost(
    s3_server: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="packager")
    bucket = f"townsquare-wrong-{uuid.uuid4().hex[:8]}"
    store = RecordingS3Store(s3_server, "", bucket=bucket)
    writer = StoreWriter(store, limits(tmp_path, memory=8 * 1024, retry_max=0.2))
    writer.start()
    for i in range(20):
        writer.put(f"live/r/p{i}.m4s", bytes([i]) * 1024, "immutable", live=True)
    await until(lambda: writer.failures >= 6)  # the first writes and several probes

    assert writer.misconfigured == f"S3 bucket '{bucket}' does not exist"
    assert writer.pending_objects == 20 and writer.spilled_objects >= 12
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert f"S3 bucket '{bucket}' does not exist" in errors[0].getMessage()

    client = s3_server.client()
    client.create_bucket(Bucket=bucket)  # the operator fixes it
    try:
        assert await writer.drain(20)
        assert writer.misconfigured is None and writer.last_error is None
        for i in range(20):
            assert stored(s3_server, f"live/r/p{i}.m4s", bucket) == bytes([i]) * 1024
        assert spill_files(tmp_path / "spill") == []
    finally:
        await writer.close(0)
        store.close()
        for i in range(20):
            client.delete_object(Bucket=bucket, Key=f"live/r/p{i}.m4s")
        client.delete_bucket(Bucket=bucket)


async def test_invalid_key_is_dropped_and_counted_and_the_rest_land(
    s3_server: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pre = prefix()
    store = S3Store(s3_server.bucket, pre, s3_server.endpoint, "us-east-1")
    writer = StoreWriter(store, limits(tmp_path))
    writer.start()
    dropped = writes("dropped")
    writer.put("live/r/a.m4s", b"a", "immutable")
    writer.put("live/../../etc/passwd", b"evil", "immutable", live=True)
    writer.put("live//r", b"empty segment", "immutable")
    writer.put("live/r/b.m4s", b"b", "immutable")
    assert await writer.drain(20)
    await writer.close()

    assert writer.dropped == 2 and writes("dropped") - dropped == 2
    assert stored(s3_server, f"{pre}/live/r/a.m4s") == b"a"
    assert stored(s3_server, f"{pre}/live/r/b.m4s") == b"b"
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("live/../../etc/passwd" in m for m in messages)
    assert writer.healthy and writer.misconfigured is None
    store.close()


async def test_uploads_in_flight_never_exceed_the_concurrency_limit(
    s3_server: S3Server, tmp_path: Path
) -> None:
    store = RecordingS3Store(s3_server, prefix())
    writer = StoreWriter(store, limits(tmp_path, concurrency=3))
    writer.start()
    for i in range(30):
        writer.put(f"obj/{i}", b"x" * 100, "immutable")
    assert await writer.drain(20)
    await writer.close()
    assert len(store.landed) == 30
    assert store.most_in_flight == 3
    store.close()


def test_limits_come_from_the_settings(tmp_path: Path) -> None:
    s = StoreSettings(data_dir=tmp_path / "data")
    lim = WriterLimits.from_settings(s)
    assert lim == WriterLimits(memory_bytes=64 * 1024 * 1024, spill_dir=tmp_path / "data" / "spill",
                               retry_max_seconds=5.0, concurrency=8, drain_seconds=10.0)
    s = StoreSettings(data_dir=tmp_path, store_spill_dir=tmp_path / "elsewhere")
    assert WriterLimits.from_settings(s).spill_dir == tmp_path / "elsewhere"


async def test_objects_spilled_by_a_crashed_run_are_uploaded_oldest_first_after_live_ones(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """What a killed process left in the spill folder is uploaded, behind live objects."""
    folder = SpillFolder(tmp_path / "spill")
    for i in range(5):
        folder.write(f"old/{i}", f"old {i}".encode(), "immutable")
    (tmp_path / "spill" / ".tmp-crashed-mid-write").write_bytes(b"half")
    store = RecordingS3Store(s3_server, prefix())
    writer = StoreWriter(store, limits(tmp_path, concurrency=1))
    writer.put("new/backlog", b"b", "immutable")
    writer.put("new/live", b"l", "immutable", live=True)
    writer.start()
    assert await writer.drain(20)
    await writer.close()
    assert store.landed == ["new/live", "old/0", "old/1", "old/2", "old/3", "old/4",
                            "new/backlog"]
    assert spill_files(tmp_path / "spill") == []
    store.close()


async def test_with_nowhere_to_spill_parts_past_the_live_edge_go_first_and_segments_are_kept(
    s3_server: S3Server, outage: Outage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import packager.writer

    monkeypatch.setattr(packager.writer, "LIVE_EDGE_SECONDS", 0.3)
    (tmp_path / "not-a-folder").write_bytes(b"")
    pre = prefix()
    bound = 64 * 1024
    store = RecordingS3Store(s3_server, pre)
    lim = WriterLimits(memory_bytes=bound, spill_dir=tmp_path / "not-a-folder" / "spill",
                       retry_max_seconds=0.3, concurrency=2, drain_seconds=20)
    writer = StoreWriter(store, lim)
    writer.start()
    outage.begin()
    base = "live/room/aac96/e1-abcdef"
    segments, parts = {}, {}
    for msn in range(1, 13):  # 12 segments of 4 KiB, 9 parts of 1 KiB each: 156 KiB in all
        for i in range(9):
            key = f"{base}/p{msn}.{i}.m4s"
            parts[key] = bytes([msn, i]) * 512
            writer.put(key, parts[key], "immutable", live=True)
        segments[f"{base}/s{msn}.m4s"] = bytes([msn]) * 4096
        writer.put(f"{base}/s{msn}.m4s", segments[f"{base}/s{msn}.m4s"], "immutable")
        if msn == 6:
            await asyncio.sleep(0.4)  # the first half is past the live edge now
    await until(lambda: writer.failures >= 1)
    # Past the bound only by what could not be let go: the newest parts and the segments.
    assert writer.shed > 0 and writer.pending_bytes <= bound + 12 * 4096
    assert writes("shed") >= writer.shed

    outage.end()
    assert await writer.drain(20)
    await writer.close()
    for key, data in segments.items():
        assert stored(s3_server, f"{pre}/{key}") == data, "every segment is kept"
    shed = [k for k in parts if k not in store.landed]
    assert len(shed) == writer.shed and all(int(k.split("/p")[1].split(".")[0]) <= 6
                                            for k in shed), "only parts of the older half"
    store.close()


class DistantStore(LocalStore):
    """The real folder store, each write taking `latency` seconds first: a bucket far away."""

    def __init__(self, root: Path, latency: float) -> None:
        super().__init__(root)
        self.latency = latency

    async def put(self, key: str, data: bytes, cache_control: str) -> None:
        await asyncio.sleep(self.latency)
        await super().put(key, data, cache_control)


async def test_a_playlist_rewritten_every_part_lands_while_the_store_lags(tmp_path: Path) -> None:
    # One write at a time, 40 ms each: 25 a second, while the room puts 80 (three parts
    # and their playlist every 50 ms). The store falls behind by more every cycle.
    store = DistantStore(tmp_path / "store", latency=0.04)
    writer = StoreWriter(store, limits(tmp_path, concurrency=1))
    writer.start()
    stored_versions: list[int] = []
    playlist = tmp_path / "store" / "live" / "live.m3u8"
    for cycle in range(60):
        for r in range(3):
            writer.put(f"live/r{r}/p{cycle}.m4s", b"part", "immutable", live=True)
        writer.put("live/live.m3u8", f"playlist {cycle}".encode(), "max-age=1", live=True)
        await asyncio.sleep(0.05)
        if playlist.exists():
            stored_versions.append(int(playlist.read_text().split()[1]))
    lag = writer.pending_objects
    await writer.close()
    store.close()
    assert lag > 60, "the store was meant to lag"
    # Each time the store comes to the playlist's place in the queue it takes the newest
    # version: the playlist keeps landing, as often as the store gets through the queue
    # (here versions 2, 10 and 30). At the queue's tail, each version replaced before the
    # store reached it, it never landed in these 3 s.
    assert len(set(stored_versions)) >= 3, stored_versions
    assert stored_versions[-1] >= 25, stored_versions


def journal_files(folder: Path) -> list[Path]:
    return sorted((folder / "journal").glob("*.journal")) if (folder / "journal").exists() \
        else []


def journaled() -> float:
    return REGISTRY.get_sample_value("townsquare_store_journal_objects") or 0.0


async def test_a_durable_put_is_in_the_journal_until_stored_and_is_no_spill(
    s3_server: S3Server, outage: Outage, tmp_path: Path
) -> None:
    pre = prefix()
    writer = StoreWriter(RecordingS3Store(s3_server, pre), limits(tmp_path))
    writer.start()
    outage.begin()
    before = journaled()
    keys = [f"live/r/aac96/e1-x/p1.{i}.m4s" for i in range(5)]
    for i, key in enumerate(keys):
        writer.put(key, b"part %d" % i, "immutable", live=True, durable=True)
        # In the journal when `put` returns: the origin lists the part right after.
        (journal,) = journal_files(tmp_path / "spill")
        assert b"part %d" % i in journal.read_bytes()
        assert journaled() - before == i + 1
    writer.put("live/r/aac96/live.m3u8", b"#EXTM3U\n", "no-cache", live=True)  # not durable
    assert journaled() - before == 5
    assert writer.spilled_objects == 0 and spill_files(tmp_path / "spill") == []
    outage.end()
    assert await writer.drain(20)
    assert journaled() == before, "each object leaves the journal once stored"
    assert stored(s3_server, f"{pre}/{keys[3]}") == b"part 3"
    await writer.close(5)
    assert journal_files(tmp_path / "spill") == [], "a journal with nothing undone goes"



class HoldingStore(LocalStore):
    """The real folder store, where writes of keys under `held/` wait until `release` is
    set: a store that has not answered some writes (their uploads hang)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.release = asyncio.Event()

    async def put(self, key: str, data: bytes, cache_control: str) -> None:
        if "/held/" in key:
            await self.release.wait()
        await super().put(key, data, cache_control)


def journal_bytes() -> float:
    return REGISTRY.get_sample_value("townsquare_store_journal_bytes") or 0.0


async def test_the_journal_stops_writing_ahead_past_its_bound_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A journal file goes once every object in it is done: one object the store never
    # answers keeps its whole file, done records and all. One such object in each of three
    # files holds three files' worth (3 x 4 MiB) where the bound is 2 x 1 MiB + 8 MiB.
    store = HoldingStore(tmp_path / "store")
    writer = StoreWriter(store, limits(tmp_path, concurrency=8))
    writer.start()
    part = os.urandom(32 << 10)
    before = journaled()

    async def settled(count: int) -> None:
        """Until the store has taken everything but `count` objects."""
        await until(lambda: writer.pending_objects == count)

    n = 0
    for held in range(3):
        writer.put(f"live/r/held/p{held}.m4s", part, "immutable", live=True, durable=True)
        # More than a file's worth after it, so that the next one is in another file; in
        # batches the store keeps up with, as on air (nothing spilled past the memory bound).
        for _ in range((ROLL_BYTES + (256 << 10)) // len(part) // 8):
            for _ in range(8):
                writer.put(f"live/r/aac96/p{n}.m4s", part, "immutable", live=True,
                           durable=True)
                n += 1
            await settled(held + 1)
    assert writer.spilled_objects == 0
    files = journal_files(tmp_path / "spill")
    assert len(files) >= 3 and journal_bytes() > 2 * (1 << 20) + 2 * ROLL_BYTES
    assert journaled() - before == 3, "only the objects the store holds are undone"
    with caplog.at_level(logging.WARNING, "packager.writer"):
        writer.put("live/r/aac96/past.m4s", part, "immutable", live=True, durable=True)
        writer.put("live/r/aac96/past2.m4s", part, "immutable", live=True, durable=True)
        assert journaled() - before == 3, "nothing written ahead past the bound"
        said = [r.getMessage() for r in caplog.records if "over its bound" in r.getMessage()]
        assert len(said) == 1, "said once"
        # The store answers: the files the held objects kept go (the one appended to now
        # stays), and the next durable put is written ahead again.
        store.release.set()
        await until(lambda: writer.pending_objects == 0
                    and len(journal_files(tmp_path / "spill")) == 1)
        assert journal_bytes() <= ROLL_BYTES + len(part)
        writer.put("live/r/aac96/after.m4s", part, "immutable", live=True, durable=True)
        assert journaled() - before == 1
        assert any("back under its bound" in r.getMessage() for r in caplog.records)
    await writer.close(5)
    store.close()
    assert (tmp_path / "store" / "live/r/aac96/past.m4s").read_bytes() == part


_CRASHING_WRITER = """
import asyncio, sys
from pathlib import Path
from packager.store import S3Store
from packager.writer import StoreWriter, WriterLimits

async def main() -> None:
    bucket, pre, endpoint, spill = sys.argv[1:5]
    store = S3Store(bucket, pre, endpoint, "us-east-1")
    writer = StoreWriter(store, WriterLimits(1 << 20, Path(spill), 0.3, 4, 20))
    writer.start()
    for i in range(9):
        writer.put(f"live/r/aac96/e1-x/p4.{i}.m4s", b"part %d" % i, "immutable", live=True,
                   durable=True)
    print("listed", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def _killed_writer(s3: S3Server, pre: str, spill: Path) -> None:
    """A process whose store does not answer (nothing listens at the port) puts nine parts
    and is killed while they wait: its memory goes with it."""
    crashing = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_WRITER, s3.bucket, pre,
         f"http://127.0.0.1:{free_port()}", str(spill)],
        stdout=subprocess.PIPE, env={**os.environ, **s3.env()},
        cwd=Path(__file__).resolve().parents[2])
    try:
        assert crashing.stdout is not None
        assert crashing.stdout.readline() == b"listed\n"
    finally:
        crashing.kill()  # SIGKILL, by the pid this test started
        crashing.wait(10)


async def test_durable_puts_a_kill_caught_on_their_way_are_stored_before_a_resume_reads(
    s3_server: S3Server, tmp_path: Path
) -> None:
    pre = prefix()
    _killed_writer(s3_server, pre, tmp_path / "spill")
    assert len(journal_files(tmp_path / "spill")) == 1
    # The next run, with the store answering: a resume waits for them before it reads.
    writer = StoreWriter(RecordingS3Store(s3_server, pre), limits(tmp_path))
    writer.start()
    assert await writer.recovered(20)
    for i in range(9):
        assert stored(s3_server, f"{pre}/live/r/aac96/e1-x/p4.{i}.m4s") == b"part %d" % i
    assert spill_files(tmp_path / "spill") == [] and journal_files(tmp_path / "spill") == []
    await writer.close(5)
