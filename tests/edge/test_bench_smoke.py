"""The benchmarks run on demand (`./dev bench`); this runs the offload curve at a tiny size so
that it cannot rot between runs."""

from __future__ import annotations

from tests.bench import offload


def test_offload_benchmark_runs_at_a_tiny_size() -> None:
    result = offload.run([3, 6], seconds=2, results=None)
    assert [s["listeners"] for s in result["steps"]] == [3, 6]
    for step in result["steps"]:
        assert step["errors"] == {} and step["origin_requests_per_s"] > 0
        assert step["part_delay_s"]["count"] > 0
    assert result["largest_over_smallest"] > 0
