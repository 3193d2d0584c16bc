"""The S3 backend against a real S3-compatible server (moto, started by a fixture)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import os
import posixpath
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import m3u8
import pytest

from packager.errors import ObjectRejected, StoreError, StoreMisconfigured, StoreUnavailable
from packager.store import LocalStore, S3Store
from packager.writer import StoreWriter, WriterLimits
from tests.conftest import S3Server
from tests.support.procs import free_port, running
from tests.support.tcpproxy import TcpProxy


async def test_objects_keep_content_type_and_cache_control(s3_server: S3Server) -> None:
    store = S3Store(s3_server.bucket, "meta-test", s3_server.endpoint, "us-east-1")
    await store.put("live/r/aac96/e1-abcdef/p1.0.m4s", b"part", "public, max-age=86400, immutable")
    await store.put("live/r/master.m3u8", b"#EXTM3U\n", "public, max-age=1")
    assert await store.get("live/r/aac96/e1-abcdef/p1.0.m4s") == b"part"
    assert await store.get("live/r/missing.m4s") is None
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key="meta-test/live/r/master.m3u8")
    assert head["ContentType"] == "application/vnd.apple.mpegurl"
    assert head["CacheControl"] == "public, max-age=1"
    head = s3_server.client().head_object(Bucket=s3_server.bucket,
                                          Key="meta-test/live/r/aac96/e1-abcdef/p1.0.m4s")
    assert head["ContentType"] == "audio/mp4"
    tags = s3_server.client().get_object_tagging(Bucket=s3_server.bucket,
                                                 Key="meta-test/live/r/aac96/e1-abcdef/p1.0.m4s")
    assert tags["TagSet"] == [{"Key": "townsquare-retention", "Value": "live"}]
    await store.put("live/r/aac96/e1-abcdef/s1.m4s", b"segment",
                    "public, max-age=86400, immutable")
    tags = s3_server.client().get_object_tagging(Bucket=s3_server.bucket,
                                                 Key="meta-test/live/r/aac96/e1-abcdef/s1.m4s")
    assert tags["TagSet"] == [{"Key": "townsquare-retention", "Value": "recording"}]


async def test_store_outage_delays_writes_but_loses_none(s3_server: S3Server,
                                                         tmp_path: Path) -> None:
    from moto.server import ThreadedMotoServer

    store = S3Store(s3_server.bucket, "outage", s3_server.endpoint, "us-east-1")
    writer = StoreWriter(store, WriterLimits(memory_bytes=1 << 20, spill_dir=tmp_path / "spill",
                                             retry_max_seconds=0.5, concurrency=8,
                                             drain_seconds=30))
    writer.start()
    s3_server.server.stop()  # type: ignore[attr-defined]
    try:
        for i in range(20):
            writer.put(f"obj{i}", f"payload {i}".encode(), "no-cache")
        for _ in range(200):
            if writer.failures >= 2:
                break
            await asyncio.sleep(0.1)
        assert writer.pending_objects == 20 and writer.failures >= 2, "writes wait while the store is down"
    finally:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_server.port, verbose=False)
        server.start()
        s3_server.server = server
    await asyncio.wait_for(writer.drain(), 30)
    await writer.close()
    for i in range(20):
        assert await store.get(f"obj{i}") == f"payload {i}".encode()


@pytest.mark.slow
def test_thirty_second_broadcast_to_s3_keeps_a_complete_recording(
    s3_server: S3Server, tmp_path: Path
) -> None:
    prefix = "rec30"
    with running(["ingest", "--room", "rec", "--source", "tone", "--seconds", "30",
                  "--s3-prefix", prefix], tmp_path / "ingest.log", None,
                 env=s3_server.env()) as svc:
        svc.proc.wait(90)
        assert svc.proc.returncode == 0, svc.output()
    client = s3_server.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=s3_server.bucket, Prefix=f"{prefix}/live/rec/") for o in page.get("Contents", [])]
    assert any(re.search(r"/aac96/e[^/]+/p1\.0\.m4s$", k) for k in keys), \
        "parts stay in S3: the bucket's lifecycle rule expires them"
    room = client.get_object(Bucket=s3_server.bucket, Key=f"{prefix}/live/rec/room.json")
    assert room["ContentType"] == "application/json"
    rec_master = next(k for k in keys if re.fullmatch(rf"{prefix}/live/rec/[^/]+/recording\.m3u8", k))
    base = rec_master.rsplit("/", 1)[0]
    master = m3u8.loads(client.get_object(Bucket=s3_server.bucket, Key=rec_master)["Body"].read().decode())
    assert len(master.playlists) == 3
    for variant in master.playlists:
        key = f"{base}/{variant.uri}"
        text = client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read().decode()
        pl = m3u8.loads(text)
        assert pl.is_endlist and pl.playlist_type == "event" and pl.media_sequence == 1
        folder = key.rsplit("/", 1)[0]
        (init,) = {seg.init_section.uri for seg in pl.segments}
        data = client.get_object(Bucket=s3_server.bucket, Key=_below(folder, init))["Body"].read()
        for seg in pl.segments:
            obj = client.get_object(Bucket=s3_server.bucket, Key=_below(folder, seg.uri))
            assert obj["ContentType"] == "audio/mp4"
            assert "immutable" in obj["CacheControl"]
            data += obj["Body"].read()
        with av.open(io.BytesIO(data), "r") as c:
            seconds = sum(int(f.samples) for f in c.decode(audio=0)) / 48000
        assert abs(seconds - 30.0) <= 0.24, f"{variant.uri}: {seconds:.3f} s"
        assert abs(sum(s.duration for s in pl.segments) - 30.0) <= 0.24


def _below(folder: str, uri: str) -> str:
    """A URI of a playlist stored in `folder`, as a store key."""
    return posixpath.normpath(posixpath.join(folder, uri))


async def test_local_store_writes_whole_readable_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.put("live/r/aac96/e1-abcdef/p1.0.m4s", b"part", "immutable")
    path = tmp_path / "live/r/aac96/e1-abcdef/p1.0.m4s"
    assert path.read_bytes() == b"part"
    assert path.stat().st_mode & 0o777 == 0o644
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]
    assert await store.get("live/r/b/aac96/missing.m4s") is None
    for bad in ("../etc/passwd", "/abs", "a//b", "a/./b"):
        with pytest.raises(StoreError):
            await store.put(bad, b"x", "no-cache")




async def test_a_connection_closed_as_the_request_goes_out_is_asked_again_once(
        s3_server: S3Server) -> None:
    with TcpProxy("127.0.0.1", s3_server.port) as link:
        store = S3Store(s3_server.bucket, f"again-{uuid.uuid4().hex[:8]}",
                        f"http://{link.address}", "us-east-1")
        # The server lets the connection go as the request arrives (what S3 does to an idle
        # keep-alive connection): botocore's one retry sends it again, and it lands.
        link.close_next(1)
        await store.put("live/r/aac96/e1-abcdef/p1.0.m4s", b"part", "immutable")
        link.close_next(1)
        assert await store.get("live/r/aac96/e1-abcdef/p1.0.m4s") == b"part"
        # Twice in a row: unavailable, said as such (the writer retries with its backoff; a
        # resume reads again within its wait).
        link.close_next(2)
        with pytest.raises(StoreUnavailable, match="unreachable"):
            await store.get("live/r/aac96/e1-abcdef/p1.0.m4s")
        store.close()

async def test_s3_list_returns_every_key_below_a_prefix_across_pages(s3_server: S3Server) -> None:
    prefix = f"list-{uuid.uuid4().hex[:8]}"
    store = S3Store(s3_server.bucket, prefix, s3_server.endpoint, "us-east-1")
    client = s3_server.client()
    keys = [f"live/r/aac96/e1-abcdef/p{i}.0.m4s" for i in range(1003)]  # > one page (1000)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/{k}",
                                                  Body=b"x"), keys))
    client.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/live/room2/master.m3u8", Body=b"x")
    assert await store.list("live/r/") == sorted(keys)
    assert await store.list("live/room") == ["live/room2/master.m3u8"]
    assert len(await store.list("live/r")) == 1004, "a prefix is text, as in S3"
    assert len(await store.list("")) == 1004
    assert await store.list("live/nothing/") == []
    with pytest.raises(ObjectRejected):
        await store.list("../other")
    store.close()


async def test_s3_check_names_a_missing_bucket(s3_server: S3Server) -> None:
    await S3Store(s3_server.bucket, "check", s3_server.endpoint, "us-east-1").check()
    missing = f"townsquare-missing-{uuid.uuid4().hex[:8]}"
    store = S3Store(missing, "", s3_server.endpoint, "us-east-1")
    with pytest.raises(StoreMisconfigured) as err:
        await store.check()
    assert str(err.value) == f"S3 bucket '{missing}' does not exist"
    with pytest.raises(StoreMisconfigured, match="does not exist"):
        await store.put("live/r/master.m3u8", b"x", "no-cache")


async def test_s3_check_reports_an_unreachable_endpoint_as_unavailable() -> None:
    store = S3Store("any-bucket", "", f"http://127.0.0.1:{free_port()}", "us-east-1")
    with pytest.raises(StoreUnavailable, match="unreachable"):
        await store.check()
    with pytest.raises(StoreUnavailable):
        await store.put("live/r/master.m3u8", b"x", "no-cache")


async def test_s3_rejects_an_invalid_key_without_calling_s3(s3_server: S3Server) -> None:
    store = S3Store(s3_server.bucket, "bad-keys", s3_server.endpoint, "us-east-1")
    for bad in ("../etc/passwd", "/abs", "a//b", "a/./b", ""):
        with pytest.raises(ObjectRejected, match="invalid store key"):
            await store.put(bad, b"x", "no-cache")


class RefusingExecutor(concurrent.futures.ThreadPoolExecutor):
    """Stands in for asyncio's default executor: any use of it is a failure."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"default executor used for {fn!r}")


async def test_store_calls_never_use_asyncios_default_executor(
    s3_server: S3Server, tmp_path: Path
) -> None:
    asyncio.get_running_loop().set_default_executor(RefusingExecutor())
    s3 = S3Store(s3_server.bucket, "own-pool", s3_server.endpoint, "us-east-1")
    local = LocalStore(tmp_path / "data")
    for store in (s3, local):
        await store.check()
        await store.put("live/r/master.m3u8", b"#EXTM3U\n", "no-cache")
        assert await store.get("live/r/master.m3u8") == b"#EXTM3U\n"
        assert await store.list("live/") == ["live/r/master.m3u8"]
        store.close()


async def test_local_list_walks_the_folder_and_skips_temporary_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for key in ("live/r/aac96/e1-abcdef/p1.0.m4s", "live/r/master.m3u8", "live/room2/room.json"):
        await store.put(key, b"x", "no-cache")
    (tmp_path / "live/r/.tmp-abc123").write_bytes(b"half")
    assert await store.list("live/r/") == ["live/r/aac96/e1-abcdef/p1.0.m4s", "live/r/master.m3u8"]
    assert await store.list("live/r") == ["live/r/aac96/e1-abcdef/p1.0.m4s",
                                          "live/r/master.m3u8", "live/room2/room.json"]
    assert await store.list("live/r/mas") == ["live/r/master.m3u8"]
    assert await store.list("") == await store.list("live/")
    assert await store.list("live/none/") == []
    with pytest.raises(ObjectRejected):
        await store.list("../")


async def test_local_check_makes_the_folder(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "not" / "yet")
    await store.check()
    assert (tmp_path / "not" / "yet").is_dir()
    assert not list((tmp_path / "not" / "yet").iterdir()), "the probe file is removed"


async def test_local_check_names_a_folder_blocked_by_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    store = LocalStore(tmp_path / "file" / "data")
    with pytest.raises(StoreMisconfigured, match=f"folder {tmp_path / 'file' / 'data'}"):
        await store.check()


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody, root included, can write: a read-only tmpfs when we are root
    (root ignores permission bits), mode 0555 otherwise."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if shutil.which("mount") is None:
        pytest.skip("running as root without mount(8): cannot make a read-only folder")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                          check=False, capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


async def test_local_check_says_a_read_only_folder_is_not_writable(read_only_folder: Path) -> None:
    store = LocalStore(read_only_folder)
    with pytest.raises(StoreError) as err:
        await store.check()
    assert isinstance(err.value, StoreMisconfigured)
    assert str(err.value).startswith(f"folder {read_only_folder} is not writable: ")
    with pytest.raises(StoreMisconfigured, match="not writable"):
        await store.put("live/r/master.m3u8", b"x", "no-cache")
    store.close()
