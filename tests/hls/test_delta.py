"""A full playlist rebuilt from a delta update and an older full copy is the one the origin
renders for that state: every pair of states of a live history with epoch changes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hls.delta import expand_delta
from packager.playlist import parse_media, render_media
from tests.hls.histories import PARTS, T0, live_history


@settings(max_examples=60, deadline=None)
@given(segments=st.integers(10, 30), window=st.sampled_from([7, 15]),
       epochs_at=st.frozensets(st.integers(2, 30), max_size=3),
       data=st.data())
def test_a_delta_update_and_an_older_full_copy_make_the_origin_s_full_playlist(
        segments: int, window: int, epochs_at: frozenset[int], data: st.DataObject) -> None:
    states = live_history(segments, epochs_at, window)
    newer = data.draw(st.integers(1, len(states) - 1))
    older = data.draw(st.integers(max(0, newer - 3 * PARTS), newer - 1))
    delta = render_media(states[newer], skip=True)
    full_then, full_now = render_media(states[older]), render_media(states[newer])
    rebuilt = expand_delta(full_then, delta)
    if "#EXT-X-SKIP" not in delta:
        assert rebuilt is None
        return
    first = states[newer].segments[0].msn
    skipped = int(delta.split("#EXT-X-SKIP:SKIPPED-SEGMENTS=")[1].split("\n")[0])
    held = {s.msn for s in states[older].segments}
    if not all(msn in held for msn in range(first, first + skipped)):
        assert rebuilt is None, "a skipped segment the older copy does not hold"
        return
    assert rebuilt == full_now


def test_a_full_copy_that_slid_past_the_skipped_segments_gives_nothing() -> None:
    states = live_history(40, frozenset(), 15)
    newest = states[-1]
    delta = render_media(newest, skip=True)
    assert "#EXT-X-SKIP" in delta
    assert expand_delta(render_media(states[10]), delta) is None  # too old: slid past
    assert expand_delta(delta, delta) is None  # a delta is no full copy
    assert expand_delta(render_media(newest), render_media(newest)) is None  # nothing skipped


def test_a_discontinuity_that_slid_to_the_window_s_start_is_counted_not_tagged() -> None:
    states = live_history(14, frozenset({5}), 7)
    older, newer = states[104], states[116]  # segment 5 opens the newer window
    assert newer.segments[0].msn == 5 and newer.discontinuity_sequence == 1
    assert any(s.msn == 5 and s.discontinuity for s in older.segments)
    rebuilt = expand_delta(render_media(older), render_media(newer, skip=True))
    assert rebuilt == render_media(newer)
    assert [s.uri for s in parse_media(rebuilt).segments] == [s.uri for s in newer.segments]


def test_a_full_copy_of_another_broadcast_under_the_same_numbers_gives_nothing() -> None:
    """A room that began again from segment 1: the older copy holds segments of the same
    numbers and names from the broadcast before, whose times do not run on into this one."""
    before = live_history(30, frozenset(), 15)
    again = live_history(30, frozenset(), 15, began=T0 + 3600)
    delta = render_media(again[-1], skip=True)
    assert "#EXT-X-SKIP" in delta
    assert expand_delta(render_media(before[-3]), delta) is None
    assert expand_delta(render_media(again[-3]), delta) == render_media(again[-1])
