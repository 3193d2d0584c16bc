"""Audience reports (hls/audience.py): what a well-formed report is, the clamp, and the report
table's freshness and bounds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hls.audience import MAX_COUNT, ReportTable, clamp, parse_report

REPORTERS = st.sampled_from(["a1b2c3d4e5f6", "shield-1", "edge.eu_2", "x"])
ROOMS = st.sampled_from(["demo", "talk", "quiet"])


def test_a_report_names_an_edge_and_a_count() -> None:
    assert parse_report("a1b2c3d4e5f6", "42") == ("a1b2c3d4e5f6", 42)
    assert parse_report(" shield-1 ", " 7 ") == ("shield-1", 7)


def test_counts_are_clamped_to_the_range() -> None:
    assert parse_report("e", "-5") == ("e", 0)
    assert parse_report("e", "99999999999") == ("e", MAX_COUNT)
    assert clamp(MAX_COUNT + 1) == MAX_COUNT


def test_malformed_reports_are_ignored() -> None:
    for reporter, count in [(None, "1"), ("e", None), ("", "1"), ("e" * 65, "1"),
                            ("e/../x", "1"), ("e\r\nx", "1"), ("e", ""), ("e", "1.5"),
                            ("e", "0x10"), ("e", "1" * 21), ("e", "١٢"), ("e", "1e3")]:
        assert parse_report(reporter, count) is None, (reporter, count)


@given(st.text(max_size=80), st.text(max_size=30))
def test_any_header_text_parses_to_a_clamped_report_or_none(reporter: str, count: str) -> None:
    parsed = parse_report(reporter, count)
    if parsed is not None:
        assert 0 <= parsed[1] <= MAX_COUNT
        assert 1 <= len(parsed[0]) <= 64


def test_the_total_is_the_sum_of_each_reporters_latest_count() -> None:
    t = ReportTable(fresh=15)
    t.report("demo", "a", 10, 100.0)
    t.report("demo", "b", 5, 101.0)
    t.report("demo", "a", 3, 102.0)  # a's latest replaces its earlier count
    t.report("talk", "a", 8, 102.0)
    assert t.total("demo", 103.0) == 8
    assert t.total("talk", 103.0) == 8
    assert t.total("nobody", 103.0) == 0


def test_reports_stop_counting_once_stale_and_are_swept() -> None:
    t = ReportTable(fresh=15)
    t.report("demo", "a", 10, 100.0)
    t.report("demo", "b", 5, 110.0)
    assert t.total("demo", 114.9) == 15
    assert t.total("demo", 115.0) == 5  # a is 15 s old
    assert t.totals(125.0) == {}
    assert len(t) == 0 and t.entries == 0


def test_a_full_table_refuses_new_reporters_and_keeps_counting_the_old() -> None:
    t = ReportTable(fresh=15, max_rooms=2, max_reporters=2, max_entries=3)
    assert t.report("r1", "a", 1, 0.0) and t.report("r1", "b", 1, 0.0)
    assert not t.report("r1", "c", 1, 0.0)  # reporters per room
    assert t.report("r2", "a", 1, 0.0)
    assert not t.report("r2", "b", 1, 0.0)  # entries in all
    assert not t.report("r3", "a", 1, 0.0)  # rooms
    assert t.report("r1", "a", 7, 1.0)  # a known reporter is always updated
    assert t.total("r1", 1.0) == 8
    # Once the old reports are stale, newcomers find room.
    assert t.report("r3", "z", 4, 20.0)
    assert t.totals(20.0) == {"r3": 4}


@settings(max_examples=200)
@given(st.lists(st.tuples(ROOMS, REPORTERS, st.integers(-10**9, 10**9),
                          st.floats(0, 5, allow_nan=False)), max_size=60))
def test_the_table_stays_within_its_bounds_and_its_totals_are_clamped_sums(
        reports: list[tuple[str, str, int, float]]) -> None:
    t = ReportTable(fresh=15, max_rooms=2, max_reporters=3, max_entries=5)
    now = 0.0
    latest: dict[tuple[str, str], int] = {}
    for room, reporter, count, step in reports:
        now += step
        if t.report(room, reporter, count, now):
            latest[(room, reporter)] = clamp(count)
        assert len(t) <= 2 and t.entries <= 5
    for room in ("demo", "talk", "quiet"):
        total = t.total(room, now)
        assert 0 <= total <= MAX_COUNT
        if now < 15:  # nothing has gone stale: every accepted report counts
            assert total == clamp(sum(n for (r, _), n in latest.items() if r == room))
