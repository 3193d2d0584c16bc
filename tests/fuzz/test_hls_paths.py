"""The LL-HLS request grammar shared by origin and edge, in-process: `_HLS_*` directives
(hls/directives.py), object paths (hls/names.py), the edge's request targets
(edge/targets.py) and the playlist reach the edge reads from upstream answers (hls/reach.py).

Inputs start from real paths and queries (named by `hls.names` itself) and are mutated as text:
characters swapped for the ones that matter to a URL (`/ . % ? & = _ #`), digits made huge,
parameters repeated and reordered. Only the modules' own errors may come out; what parses must
write back to a form that parses to the same thing.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from edge.targets import parse_target
from hls.directives import MAX_MSN, BadDirective, parse_query
from hls.names import parse_object
from hls.reach import parse_position
from tests.fuzz import seeds
from tests.fuzz.bounds import bounded
from tests.fuzz.hls_text import paths, queries
from tests.fuzz.mutate import mutated
from tests.fuzz.profiles import count, fuzz_settings


@fuzz_settings(ci=300)
@given(queries())
@example("_HLS_msn=9007199254740993")
@example("_HLS_msn=١٢")  # Arabic-Indic digits: str.isdigit says yes, int() would too
def test_directives_parse_or_refuse_and_write_back_the_same(query: str) -> None:
    count("hls.directives")
    with bounded(len(query) * 4):
        try:
            d = parse_query(query)
        except BadDirective:
            return
    assert parse_query(d.query()) == d
    for n in (d.msn, d.part):
        assert n is None or 0 <= n <= MAX_MSN


@fuzz_settings(ci=300)
@given(paths())
def test_object_paths_name_one_object_or_none(path: str) -> None:
    count("hls.names")
    with bounded(len(path) * 4):
        obj = parse_object(path)
    if obj is not None:
        # The directory of rooms belongs to no room; every other object to the first segment.
        assert path.split("/", 1)[0] == obj.room or (obj.kind, obj.room) == ("directory", "")
        assert obj.msn is None or obj.msn >= 0


@fuzz_settings(ci=300)
@given(paths(), queries(), st.booleans())
def test_edge_targets_parse_or_refuse(path: str, query: str, with_query: bool) -> None:
    count("edge.targets")
    raw = "/live/" + path + ("?" + query if with_query else "")
    with bounded(len(raw) * 4):
        try:
            t = parse_target(raw)
        except BadDirective:
            return
    # The cache key never carries anything but the path and canonical directives.
    base, _, canonical = t.key.partition("?")
    assert base == t.path and (not canonical or parse_query(canonical).query() == canonical)


@fuzz_settings(ci=300)
@given(mutated(seeds.playlists(), max_edits=6))
def test_playlist_reach_reads_or_declines(body: bytes) -> None:
    count("hls.reach")
    with bounded(len(body)):
        try:
            pos = parse_position(body)
        except ValueError:
            return  # the edge turns it into a 502 for that one answer (see the report)
    if pos is not None:
        assert pos.part_index >= -1
