"""Where a room resumes after a crash, as the store tells it (`Packager.resume_point`), with a
real packager writing to a folder store: the store is then left as a crash leaves it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hls.names import LIVE_PLAYLIST, part_name, segment_name
from packager.pipeline import Packager
from packager.playlist import parse_media, render_media
from packager.settings import PackagerSettings
from tests.support.audio import feed_as_encoded, program_tone

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


async def test_a_segment_cut_short_in_one_rendition_and_whole_in_another_is_made_whole(
        tmp_path: Path) -> None:
    epoch, last = await _suspended_epoch(tmp_path)
    # The crash came while the Opus encoder had finished segment `last` and the AAC ones had
    # not (they finish a segment some milliseconds apart): the AAC renditions' playlists list
    # the segment before it, and only the first parts of `last` reached the store.
    for rendition in ("aac96", "aac48"):
        folder = tmp_path / "live" / ROOM / rendition
        (folder / epoch / segment_name(last)).unlink()
        parts = sorted(folder.glob(f"{epoch}/{part_name(last, 0).split('.')[0]}.*.m4s"))
        assert len(parts) > 2
        parts[-1].unlink()
        pl = parse_media((folder / LIVE_PLAYLIST).read_text())
        pl = replace(pl, segments=pl.segments[:-1], next_msn=last)
        (folder / LIVE_PLAYLIST).write_text(render_media(pl))

    packager = Packager(PackagerSettings(data_dir=tmp_path, publish_state=False))
    point = await packager.resume_point(ROOM)
    assert point.next_msn == last + 1
    # Every rendition carries its window on, so that each playlist goes on after a
    # discontinuity; the AAC renditions' segment `last` is made of the parts they stored.
    assert sorted(point.windows) == ["aac48", "aac96", "opus64"], sorted(point.windows)
    for rendition, pl in point.windows.items():
        assert pl.segments[-1].msn == last and pl.next_msn == last + 1, rendition
    short = point.windows["aac96"].segments[-1]
    assert len(short.parts) == len(parts) - 1 and short.duration < 1.92
