"""`_HLS_*` directives: one parser and one canonical form for origin and edge."""

from __future__ import annotations

import pytest

from hls.directives import BadDirective, Directives, parse_query


@pytest.mark.parametrize(("query", "expected"), [
    ("", Directives()),
    ("foo=1&bar", Directives()),
    ("_HLS_msn=5", Directives(5)),
    ("_HLS_part=2&x=y&_HLS_msn=5", Directives(5, 2)),
    ("_HLS_skip=YES", Directives(skip="YES")),
    ("_HLS_skip=v2&_HLS_msn=3&_HLS_part=0", Directives(3, 0, "v2")),
    ("_HLS_msn=5&_HLS_msn=5", Directives(5)),
])
def test_directives_are_read_whatever_the_order_and_company(query: str,
                                                            expected: Directives) -> None:
    assert parse_query(query) == expected


def test_canonical_query_orders_msn_part_skip() -> None:
    assert Directives(5, 2, "YES").query() == "_HLS_msn=5&_HLS_part=2&_HLS_skip=YES"
    assert Directives(skip="v2").query() == "_HLS_skip=v2"
    assert Directives().query() == ""


@pytest.mark.parametrize("query", [
    "_HLS_part=1", "_HLS_msn=-1", "_HLS_msn=abc", "_HLS_msn=1&_HLS_part=1.5",
    "_HLS_msn=" + "9" * 40, "_HLS_skip=NO", "_HLS_msn=1&_HLS_msn=2", "_HLS_msn=%31",
    "_HLS_msn=", "_HLS_msn=１",
])
def test_malformed_directives_are_refused(query: str) -> None:
    with pytest.raises(BadDirective):
        parse_query(query)
