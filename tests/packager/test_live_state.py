"""The live state a packager writes for origins in other processes reads back as it was."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

from packager.ladder import DEFAULT_LADDER, parse_ladder
from packager.live import LiveRoom, dumps_state, playlist_from_dict, playlist_to_dict
from packager.playlist import MediaPlaylist, Part, RenditionReport, Segment


def _window() -> MediaPlaylist:
    segments = tuple(
        Segment(msn, 1.92, f"e2-x/s{msn}.m4s", 1.7e9 + msn * 1.92,
                tuple(Part(0.21333, f"e2-x/p{msn}.{i}.m4s", independent=i % 2 == 0)
                      for i in range(9)),
                map_uri="e1-x/init.mp4" if msn < 12 else None, discontinuity=msn == 12)
        for msn in range(8, 16))
    return MediaPlaylist(2, 0.24, "e2-x/init.mp4", segments,
                         (Part(0.21333, "e2-x/p16.0.m4s"),), next_msn=16, partial_start=1.7e9,
                         preload_hint="e2-x/p16.1.m4s", discontinuity_sequence=3,
                         partial_discontinuity=True, start_offset=-5.76,
                         rendition_reports=(RenditionReport("../opus64/live.m3u8", 15, 3),))


def test_playlist_state_holds_every_field_as_dataclasses_asdict_would() -> None:
    pl = _window()
    expected = asdict(pl)
    expected["rendition_reports"] = []  # reports are rebuilt by the reader, never stored
    assert json.dumps(playlist_to_dict(pl)) == json.dumps(expected)


def test_live_state_reads_back_as_the_same_playlists() -> None:
    renditions = parse_ladder(DEFAULT_LADDER)
    pl = _window()
    room = LiveRoom("talk", "e2-x", renditions, {r.name: pl for r in renditions}, b"#EXTM3U\n")
    back = LiveRoom.from_state(json.loads(dumps_state(room)))
    assert back.room == "talk" and back.master == b"#EXTM3U\n"
    for r in renditions:
        assert playlist_from_dict(playlist_to_dict(pl)) == back.renditions[r.name].playlist
        assert back.renditions[r.name].playlist == pl.with_reports(())


def test_state_is_the_same_bytes_as_the_room_dumped_whole_as_its_window_moves() -> None:
    renditions = parse_ladder(DEFAULT_LADDER)
    pl = _window()
    room = LiveRoom("talk", "e2-x", renditions, {r.name: pl for r in renditions}, b"#EXTM3U\n")
    for step in range(6):  # the window slides: a segment leaves, one enters, parts grow
        whole = json.dumps(room.to_state(), separators=(",", ":")).encode()
        assert dumps_state(room) == whole
        pl = replace(pl, segments=(*pl.segments[1:], replace(pl.segments[-1], msn=16 + step)),
                     partial=pl.partial * (step + 2))
        # Every rendition moves, then one at a time, as parts of different lengths are cut.
        moved = renditions if step == 0 else [renditions[step % len(renditions)]]
        for r in moved:
            room.renditions[r.name].playlist = pl
        room.version += 1
