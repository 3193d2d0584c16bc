"""The benchmarks run on demand (`./dev bench`); these run them at a tiny size so that they
cannot rot between runs: the offload curve, mouth-to-ear latency by each way in, failover."""

from __future__ import annotations

from typing import Any

import pytest

from tests.bench import failover, latency, offload


def test_offload_benchmark_runs_at_a_tiny_size() -> None:
    result = offload.run([3, 6], seconds=2, results=None)
    assert [s["listeners"] for s in result["steps"]] == [3, 6]
    for step in result["steps"]:
        assert step["errors"] == {} and step["origin_requests_per_s"] > 0
        assert step["part_delay_s"]["count"] > 0
    assert result["largest_over_smallest"] > 0


@pytest.mark.browser
def test_latency_benchmark_hears_rtmp_markers_at_a_tiny_size() -> None:
    _heard(latency.run(4, paths=("rtmp",), listeners=("listen-page",), results=None,
                       warmup=1, grace=3)["paths"]["rtmp"])


@pytest.mark.browser
def test_latency_benchmark_hears_whip_markers_at_a_tiny_size() -> None:
    _heard(latency.run(4, paths=("whip",), listeners=("listen-page",), results=None,
                       warmup=1, grace=3)["paths"]["whip"])


def _heard(path: dict[str, Any]) -> None:
    page = path["listeners"]["listen-page"]
    assert page["markers_sent"] >= 3, page
    assert page["markers_detected"] >= 1, page
    assert all(v > 0 for v in page["latencies_s"]), page
    assert page["reference"]["part_hold_back_s"] > 0
    assert path["processes"]["chromium"]["cpus"]


def test_failover_benchmark_times_a_round_at_a_tiny_size() -> None:
    result = failover.run(rounds=1, lease=3.0, nodes=2, results=None, settle=1.5)
    (row,) = result["rounds"]
    assert row["killed"] == "node-1" and row["adopted_by"] == "node-2", row
    assert 0 < row["lease_left_at_kill_s"] <= 3.0
    assert row["parts_back_s"] > 0 and row["speaker_back_s"] >= row["parts_back_s"]
