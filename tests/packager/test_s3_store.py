"""The S3 backend against a real S3-compatible server (moto, started by a fixture)."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import av
import m3u8
import pytest

from packager.errors import StoreError
from packager.store import S3Store, StoreWriter
from tests.conftest import S3Server
from tests.support.procs import running


async def test_objects_keep_content_type_and_cache_control(s3_server: S3Server) -> None:
    store = S3Store(s3_server.bucket, "meta-test", s3_server.endpoint, "us-east-1")
    await store.put("live/r/b/aac96/p1.0.m4s", b"part", "public, max-age=86400, immutable")
    await store.put("live/r/master.m3u8", b"#EXTM3U\n", "public, max-age=1")
    assert await store.get("live/r/b/aac96/p1.0.m4s") == b"part"
    assert await store.get("live/r/missing.m4s") is None
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key="meta-test/live/r/master.m3u8")
    assert head["ContentType"] == "application/vnd.apple.mpegurl"
    assert head["CacheControl"] == "public, max-age=1"
    head = s3_server.client().head_object(Bucket=s3_server.bucket,
                                          Key="meta-test/live/r/b/aac96/p1.0.m4s")
    assert head["ContentType"] == "audio/mp4"
    tags = s3_server.client().get_object_tagging(Bucket=s3_server.bucket,
                                                 Key="meta-test/live/r/b/aac96/p1.0.m4s")
    assert tags["TagSet"] == [{"Key": "townsquare-retention", "Value": "live"}]
    await store.put("live/r/b/aac96/s1.m4s", b"segment", "public, max-age=86400, immutable")
    tags = s3_server.client().get_object_tagging(Bucket=s3_server.bucket,
                                                 Key="meta-test/live/r/b/aac96/s1.m4s")
    assert tags["TagSet"] == [{"Key": "townsquare-retention", "Value": "recording"}]


async def test_store_outage_delays_writes_but_loses_none(s3_server: S3Server) -> None:
    from moto.server import ThreadedMotoServer

    store = S3Store(s3_server.bucket, "outage", s3_server.endpoint, "us-east-1")
    writer = StoreWriter(store, "outage", retry_max=0.5)
    s3_server.server.stop()  # type: ignore[attr-defined]
    try:
        for i in range(20):
            writer.put(f"obj{i}", f"payload {i}".encode(), "no-cache")
        for _ in range(200):
            if writer.failures >= 2:
                break
            await asyncio.sleep(0.1)
        assert writer.pending == 20 and writer.failures >= 2, "writes wait while the store is down"
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
        data = client.get_object(Bucket=s3_server.bucket, Key=f"{folder}/init.mp4")["Body"].read()
        for seg in pl.segments:
            obj = client.get_object(Bucket=s3_server.bucket, Key=f"{folder}/{seg.uri}")
            assert obj["ContentType"] == "audio/mp4"
            assert "immutable" in obj["CacheControl"]
            data += obj["Body"].read()
        with av.open(io.BytesIO(data)) as c:
            seconds = sum(f.samples for f in c.decode(audio=0)) / 48000
        assert abs(seconds - 30.0) <= 0.24, f"{variant.uri}: {seconds:.3f} s"
        assert abs(sum(s.duration for s in pl.segments) - 30.0) <= 0.24


async def test_local_store_writes_whole_readable_files(tmp_path: Path) -> None:
    from packager.store import LocalStore

    store = LocalStore(tmp_path)
    await store.put("live/r/b/aac96/p1.0.m4s", b"part", "immutable")
    path = tmp_path / "live/r/b/aac96/p1.0.m4s"
    assert path.read_bytes() == b"part"
    assert path.stat().st_mode & 0o777 == 0o644
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]
    assert await store.get("live/r/b/aac96/missing.m4s") is None
    for bad in ("../etc/passwd", "/abs", "a//b", "a/./b"):
        with pytest.raises(StoreError):
            await store.put(bad, b"x", "no-cache")
