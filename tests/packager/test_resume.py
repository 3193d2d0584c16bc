"""Where a room resumes after a crash, as the store tells it (`Packager.resume_point`), with a
real packager writing to a folder store: the store is then left as a crash leaves it."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from hls.names import LIVE_PLAYLIST, part_name, segment_name
from packager.pipeline import Packager, plan_epoch
from packager.playlist import parse_media, render_media
from packager.settings import PackagerSettings
from tests.conftest import S3Server
from tests.support.audio import feed_as_encoded, program_tone
from tests.support.tcpproxy import TcpProxy

ROOM = "resumes"


async def _suspended_epoch(data: Path) -> tuple[str, int]:
    """A few segments of tone, then the epoch suspended as a restart does; (epoch id, the
    last media sequence number stored)."""
    packager = Packager(PackagerSettings(data_dir=data, publish_state=False))
    await packager.start()
    b = packager.start_broadcast(ROOM)
    await feed_as_encoded(b, program_tone(1), 9)  # four whole segments, the fifth under way
    await b.suspend()
    epoch = b.epoch.id
    await packager.close()
    text = (data / "live" / ROOM / "aac96" / LIVE_PLAYLIST).read_text()
    return epoch, parse_media(text).segments[-1].msn


def _as_the_crash_left_aac(data: Path, epoch: str, last: int, unstored: tuple[int, ...],
                           listed_to: int) -> int:
    """Leave the AAC renditions as a crash left them: the segments `unstored` never stored
    whole, `last` missing its last part, their playlists listing up to `listed_to`; how
    many of `last`'s parts are left."""
    for rendition in ("aac96", "aac48"):
        folder = data / "live" / ROOM / rendition
        for msn in unstored:
            (folder / epoch / segment_name(msn)).unlink()
        parts = sorted(folder.glob(f"{epoch}/{part_name(last, 0).split('.')[0]}.*.m4s"))
        assert len(parts) > 2
        parts[-1].unlink()
        pl = parse_media((folder / LIVE_PLAYLIST).read_text())
        kept = tuple(s for s in pl.segments if s.msn <= listed_to)
        (folder / LIVE_PLAYLIST).write_text(
            render_media(replace(pl, segments=kept, next_msn=listed_to + 1)))
    return len(parts) - 1


async def test_a_segment_cut_short_in_one_rendition_and_whole_in_another_is_made_whole(
        tmp_path: Path) -> None:
    epoch, last = await _suspended_epoch(tmp_path)
    # The crash came while the Opus encoder had finished segment `last` and the AAC ones had
    # not (they finish a segment some milliseconds apart): the AAC renditions' playlists list
    # the segment before it, and only the first parts of `last` reached the store.
    stored = _as_the_crash_left_aac(tmp_path, epoch, last, (last,), last - 1)

    packager = Packager(PackagerSettings(data_dir=tmp_path, publish_state=False))
    point = await packager.resume_point(ROOM)
    assert point.next_msn == last + 1
    # Every rendition carries its window on, so that each playlist goes on after a
    # discontinuity; the AAC renditions' segment `last` is made of the parts they stored.
    assert sorted(point.windows) == ["aac48", "aac96", "opus64"], sorted(point.windows)
    for rendition, pl in point.windows.items():
        assert pl.segments[-1].msn == last and pl.next_msn == last + 1, rendition
    short = point.windows["aac96"].segments[-1]
    assert len(short.parts) == stored and short.duration < 1.92


@pytest.mark.parametrize("listed", [True, False], ids=["listed", "not-listed"])
async def test_segments_that_never_landed_whole_are_made_from_their_parts(
        tmp_path: Path, listed: bool) -> None:
    epoch, last = await _suspended_epoch(tmp_path)
    # The crash came while the AAC renditions' last two segments waited behind the live
    # edge's objects (a slow store): neither reached the store, but all of `last - 1`'s
    # parts did, and the first of `last`'s. Their playlists, which go out with the live
    # edge, list `last - 1` already, or not yet.
    whole = len(list((tmp_path / "live" / ROOM / "aac96" / epoch).glob(
        f"{part_name(last - 1, 0).split('.')[0]}.*.m4s")))
    stored = _as_the_crash_left_aac(tmp_path, epoch, last, (last - 1, last),
                                    last - 1 if listed else last - 2)

    packager = Packager(PackagerSettings(data_dir=tmp_path, publish_state=False))
    point = await packager.resume_point(ROOM)
    assert point.next_msn == last + 1
    # Every rendition carries its window on: none is listed without its segment in the
    # store, and none stops short of the others.
    assert sorted(point.windows) == ["aac48", "aac96", "opus64"], sorted(point.windows)
    for rendition, pl in point.windows.items():
        assert [s.msn for s in pl.segments][-2:] == [last - 1, last], rendition
    aac = point.windows["aac96"].segments
    assert len(aac[-2].parts) == whole and abs(aac[-2].duration - 1.92) < 0.01
    assert len(aac[-1].parts) == stored
    folder = tmp_path / "live" / ROOM / "aac96" / epoch
    assert (folder / segment_name(last - 1)).exists() and (folder / segment_name(last)).exists()


async def test_a_crash_in_an_epoch_s_first_segment_resumes_after_a_discontinuity(
        tmp_path: Path) -> None:
    first_epoch, last = await _suspended_epoch(tmp_path)
    settings = PackagerSettings(data_dir=tmp_path, publish_state=False)
    packager = Packager(settings)
    await packager.start()
    try:
        b = packager.start_broadcast(ROOM, plan_epoch(await packager.resume_point(ROOM)))
        # Parts of the epoch's first segment, and then the crash: its playlists in the store
        # are still the window the epoch carried on, which ends with the epoch before.
        await feed_as_encoded(b, program_tone(1), 1.0)
        third = tmp_path / "live" / ROOM / "aac96" / b.epoch.id / part_name(last + 1, 2)
        for _ in range(200):  # the parts the encoder cut are handed to the store
            if third.exists():
                break
            await asyncio.sleep(0.05)
        assert await packager.flush(10)
        point = await Packager(settings).resume_point(ROOM)
    finally:
        await packager.close()
    assert point.next_msn == last + 2
    for rendition, pl in point.windows.items():
        before, cut = pl.segments[-2], pl.segments[-1]
        assert before.msn == last and before.uri.startswith(first_epoch), rendition
        assert cut.msn == last + 1 and cut.uri.startswith(b.epoch.id), rendition
        # A new encoder and a new init segment: the window says so.
        assert cut.discontinuity and "#EXT-X-DISCONTINUITY" in render_media(pl), rendition


async def test_a_rendition_with_nothing_of_the_last_segment_goes_on_with_silence_as_long(
        tmp_path: Path) -> None:
    epoch, last = await _suspended_epoch(tmp_path)
    # The crash came while a slow store had Opus's parts of segment `last` and none of the
    # AAC renditions' (cut some milliseconds later, queued behind them).
    for rendition in ("aac96", "aac48"):
        folder = tmp_path / "live" / ROOM / rendition
        for f in folder.glob(f"{epoch}/{part_name(last, 0).split('.')[0]}.*.m4s"):
            f.unlink()
        (folder / epoch / segment_name(last)).unlink()
        pl = parse_media((folder / LIVE_PLAYLIST).read_text())
        kept = tuple(s for s in pl.segments if s.msn < last)
        (folder / LIVE_PLAYLIST).write_text(
            render_media(replace(pl, segments=kept, next_msn=last)))

    packager = Packager(PackagerSettings(data_dir=tmp_path, publish_state=False))
    point = await packager.resume_point(ROOM)
    # Every window goes on to `last`, so every playlist goes on after a discontinuity; the
    # AAC renditions' `last` is silence as long as Opus's (to within a frame and the
    # encoder's delay), in parts, stored where a player asks for them.
    assert point.next_msn == last + 1
    assert sorted(point.windows) == ["aac48", "aac96", "opus64"], sorted(point.windows)
    opus = point.windows["opus64"].segments[-1]
    for rendition in ("aac96", "aac48"):
        seg = point.windows[rendition].segments[-1]
        assert seg.msn == last and seg.parts, rendition
        assert opus.duration <= seg.duration <= opus.duration + 2 * 1024 / 48_000, (seg, opus)
        folder = tmp_path / "live" / ROOM / rendition / epoch
        data = (folder / "init.mp4").read_bytes() + (folder / segment_name(last)).read_bytes()
        pcm = _decoded(data)
        assert pcm.size and float(np.abs(pcm).max()) < 1e-3, rendition
        assert all((folder / part_name(last, i)).exists() for i in range(len(seg.parts)))


def _decoded(mp4: bytes) -> np.ndarray:
    with av.open(io.BytesIO(mp4), mode="r") as container:
        frames = [f.to_ndarray() for f in container.decode(audio=0)]
    return np.concatenate(frames, axis=1)


async def test_a_store_that_fails_a_read_for_a_moment_is_read_again_within_the_wait(
        tmp_path: Path, s3_server: S3Server) -> None:
    with TcpProxy("127.0.0.1", s3_server.port) as link:
        settings = PackagerSettings(
            data_dir=tmp_path, publish_state=False, s3_bucket=s3_server.bucket,
            s3_prefix=f"resume-{uuid.uuid4().hex[:8]}", s3_endpoint_url=f"http://{link.address}",
            s3_region="us-east-1")
        packager = Packager(settings)
        await packager.start()
        b = packager.start_broadcast(ROOM)
        await feed_as_encoded(b, program_tone(1), 9)
        await b.suspend()
        await packager.close()
        # The restarted process finds the store refusing connections (a reset, a restart of
        # an S3 gateway) for its first reads; it answers again 0.5 s later.
        link.cut()
        asyncio.get_running_loop().call_later(0.5, link.heal)
        point = await Packager(settings).resume_point(ROOM, wait=5.0)
        assert sorted(point.windows) == ["aac48", "aac96", "opus64"], point
        assert point.next_msn >= 5
        # A store that stays away past the wait: a new timeline, at the wait's end.
        link.cut()
        started = asyncio.get_running_loop().time()
        point = await Packager(settings).resume_point(ROOM, wait=1.0)
        assert point.windows == {} and asyncio.get_running_loop().time() - started < 3.0


class _InRounds:
    """A store in front of the packager's own that answers in rounds, as a remote store
    does when every request takes one round trip: the requests made while a round is out,
    and as it comes back, go out together as the next. `rounds` counts the round trips a
    reader waited for one after another: what a failover waits on S3 for, whatever its
    latency."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.rounds, self.requests = inner, 0, 0
        self._waiting: list[asyncio.Future[None]] = []
        self._out = 0  # requests of the round out now not answered yet
        self._round: asyncio.Task[None] | None = None

    async def _ask(self, request: Callable[[], Awaitable[Any]]) -> Any:
        loop = asyncio.get_running_loop()
        self.requests += 1
        self._waiting.append(turn := loop.create_future())
        if self._round is None:
            self._round = loop.create_task(self._send())
        await turn
        try:
            return await request()
        finally:
            self._out -= 1

    async def _send(self) -> None:
        while True:
            while self._out:
                await asyncio.sleep(0.001)
            for _ in range(20):  # every request its answers lead to is asked
                await asyncio.sleep(0)
            if not self._out:
                break
        waiting, self._waiting, self._round = self._waiting, [], None
        self.rounds += 1
        self._out += len(waiting)
        for turn in waiting:
            turn.set_result(None)

    async def get(self, key: str) -> bytes | None:
        return await self._ask(lambda: self.inner.get(key))  # type: ignore[no-any-return]

    async def put(self, key: str, data: bytes, cache_control: str) -> None:
        await self._ask(lambda: self.inner.put(key, data, cache_control))


async def test_a_resume_reads_renditions_and_parts_at_once_not_one_after_another(
        tmp_path: Path) -> None:
    epoch, last = await _suspended_epoch(tmp_path)
    # The crash of `-k never_landed`, not listed: two segments to make from their parts in
    # both AAC renditions.
    _as_the_crash_left_aac(tmp_path, epoch, last, (last - 1, last), last - 2)
    packager = Packager(PackagerSettings(data_dir=tmp_path, publish_state=False))
    store = packager.store = _InRounds(packager.store)  # type: ignore[assignment]
    point = await packager.resume_point(ROOM)
    assert point.next_msn == last + 1
    # Two rounds for the room's own objects (its info, then every playlist and its epochs),
    # then every rendition at once: one to check its window's last segment, three for each
    # segment made (the segment or its first part, its other parts, the segment stored),
    # one that finds the next segment missing. Read one after another, it was 56 rounds.
    assert store.rounds <= 2 + 1 + 2 * 3 + 1, (store.rounds, store.requests)
