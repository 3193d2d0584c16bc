"""The benchmarks run on demand (`./dev bench`); these run them at a tiny size so that they
cannot rot between runs: the offload curve, mouth-to-ear latency by each way in, failover,
the ingest cost, and the plots drawn from the committed results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.bench import failover, latency, offload


def test_offload_benchmark_runs_at_a_tiny_size() -> None:
    result = offload.run([3, 6], seconds=1, results=None)
    assert [s["listeners"] for s in result["steps"]] == [3, 6]
    for step in result["steps"]:
        assert step["errors"] == {} and step["origin_requests_per_s"] > 0
        assert step["part_delay_s"]["count"] > 0
    assert result["largest_over_smallest"] > 0


@pytest.mark.browser
def test_latency_benchmark_hears_rtmp_and_whip_markers_at_a_tiny_size() -> None:
    # Both ways in through one stack and one Chromium, as the benchmark itself runs them.
    # The page joins once more on RTMP (the benchmark has hls.js's defaults join four times
    # more on both): each extra join costs the drills' phase about 7 s.
    result = latency.run(3, paths=("rtmp", "whip"), listeners=("listen-page",), results=None,
                         warmup=1, grace=2, rejoins={"rtmp": 1}, rejoin_seconds=2,
                         rejoining=("listen-page",))
    for path in ("rtmp", "whip"):
        _heard(result["paths"][path])
    joins = result["paths"]["rtmp"]["listeners"]["listen-page"]["over_joins"]
    assert joins["joins"] == 2 and len(joins["p50_of_each_s"]) == 2, joins
    assert joins["markers_detected"] >= 2 and joins["mouth_to_ear_s"]["p50"] > 0, joins
    assert "over_joins" not in result["paths"]["whip"]["listeners"]["listen-page"]
    assert [row.get("joins") for row in result["summary"]] == [2, None], result["summary"]


def test_latency_figures_over_joins_weigh_every_join_the_same() -> None:
    def join(latencies: list[float]) -> dict[str, Any]:
        return {"latencies_s": latencies, "markers_sent": len(latencies), "stalls": [],
                "mouth_to_ear_s": {"p50": sorted(latencies)[len(latencies) // 2]},
                "reference": {"hlsjs_reported_latency_s": 0.9}}

    # A first join of 60 markers at 2.0 s and two of 3 at 1.0 s: 3 markers from each.
    got = latency.over_joins([join([2.0] * 60), join([1.0] * 3), join([1.0] * 3)])
    assert got["joins"] == 3 and got["markers_per_join"] == 3
    assert got["mouth_to_ear_s"]["p50"] == 1.0 and got["mouth_to_ear_s"]["max"] == 2.0
    assert got["p50_of_each_s"] == [2.0, 1.0, 1.0] and got["median_of_join_p50s_s"] == 1.0


def _heard(path: dict[str, Any]) -> None:
    page = path["listeners"]["listen-page"]
    assert page["markers_sent"] >= 3, page
    assert page["markers_detected"] >= 1, page
    assert all(v > 0 for v in page["latencies_s"]), page
    assert page["reference"]["part_hold_back_s"] > 0
    assert path["processes"]["chromium"]["cpus"]


def test_failover_benchmark_times_a_round_at_a_tiny_size() -> None:
    result = failover.run(rounds=1, handovers=1, lease=3.0, nodes=2, results=None, settle=1.0)
    (row,) = result["rounds"]
    assert row["killed"] == "node-1" and row["adopted_by"] == "node-2", row
    assert 0 < row["lease_left_at_kill_s"] <= 3.0
    assert row["parts_back_s"] > 0 and row["speaker_back_s"] >= row["parts_back_s"]
    (handed,) = result["handover"]["rounds"]
    assert handed["stopped"] == "node-2" and handed["handed_to"] == "node-1", handed
    assert handed["old_owner_gone_s"] > 0 and handed["speaker_back_s"] >= handed["parts_back_s"]


def test_edge_throughput_benchmark_compares_with_nginx_at_a_tiny_size() -> None:
    from tests.bench import edge

    result = edge.run(runs=1, seconds=1, held=20, results=None)
    assert result["fanout"]["all_held"], result["fanout"]  # type: ignore[index]
    hits: dict[str, Any] = result["throughput"]  # type: ignore[assignment]
    sizes = hits["response_bytes"]
    assert max(sizes.values()) <= 1.05 * min(sizes.values()), sizes  # like for like
    for mode in edge.MODES:
        assert hits[mode]["errors"] == 0, hits[mode]
        assert set(hits[mode]["median_rps"]) == {"townsquare", *edge.NGINX_TUNINGS}
        assert all(v > 0 for v in hits[mode]["median_rps"].values()), hits[mode]
        assert all(v > 0 for v in hits[mode]["median_server_cpu_us_per_request"].values())


def test_join_storm_benchmark_counts_origin_requests_per_object_at_a_tiny_size() -> None:
    from tests.bench import joinstorm

    result = joinstorm.run([8], seconds=1, results=None)
    (step,) = result["steps"]
    for storm in (step["cold"], step["warm_reference"]):
        assert storm["errors"] == {} and storm["listeners_with_a_part"] == 8, storm
        origin = storm["origin"]
        assert origin["requests_by_kind"]["media"] >= 1 and origin["objects"] >= 3, origin
        assert origin["requests_beyond_one_per_object_count"] == 0, origin
    assert step["targets_met"]["at_most_one_upstream_request_per_object"]


def test_ingest_cost_benchmark_measures_townsquare_and_ffmpeg_at_a_tiny_size() -> None:
    from tests.bench import encoder

    result = encoder.run(rounds=1, window=1, seconds=4, max_rooms=2, results=None, settle=0.5)
    live = result["live_ingest"]
    assert set(live["median_cpu_s_per_broadcast_minute"]) == {"townsquare", "ffmpeg_cli"}
    assert all(v > 0 for v in live["median_cpu_s_per_broadcast_minute"].values()), live
    # Where townsquare's CPU went: the loop and the encoders each spent some.
    by_thread = live["townsquare_median_by_thread_s_per_broadcast_minute"]
    assert by_thread["loop"] > 0 and by_thread["encode"] > 0, by_thread
    check = result["rooms_per_core"]["checks"][0]
    # The program clock renders a part's blocks at once (up to about 0.2 s of program), so
    # over a window of one second what it fed moves by up to a fifth either way.
    assert check["rooms"] >= 1 and check["program_fed_over_wall"] > 0.7, check
    # The CLI at the same scale: one process a room, as many as the largest check had, in
    # rounds beside as many rooms in townsquare, the check first.
    per_core = result["rooms_per_core"]
    scale = per_core["at_scale"]
    assert scale["rooms"] in {c["rooms"] for c in per_core["checks"]}, per_core
    assert scale["runs"]["townsquare"][0] in per_core["checks"]
    assert [len(scale["runs"][k]) for k in ("townsquare", "ffmpeg_cli")] == [1, 1]
    assert all(r["rooms"] == scale["rooms"] for rs in scale["runs"].values() for r in rs)
    assert per_core["ratio_per_room_at_that_scale"] > 0
    assert result["encode_only"]["runs"]["townsquare"][0]["events"] > 0


def test_plots_are_drawn_from_the_committed_results(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the bench extra: pip install -e '.[bench]'")
    from tests.bench import plots

    done = plots.render(images=tmp_path)
    assert set(done) == {name for _, _, name in plots.FIGURES}
    for name in ("offload-curve.png", "part-delay.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG"), done[name]
