"""The capacity model's arithmetic, `townsquare plan` on the command line, and both against
the committed offload benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from capacity.measured import MEASURED_EDGE, NoUsableStep, edge_capacity_from
from capacity.model import DEFAULT_PARTS, Inputs, PlanError, make_plan, upstream_rps


def test_a_listener_costs_two_requests_per_part() -> None:
    p = make_plan(Inputs(listeners=1000, part_target=0.25))
    assert p.requests_per_listener == 8.0 and p.listener_requests_per_s == 8000


def test_origin_load_does_not_grow_with_the_audience_once_shields_stand_in_front() -> None:
    small = make_plan(Inputs(listeners=1_000))
    million = make_plan(Inputs(listeners=1_000_000))
    ten_million = make_plan(Inputs(listeners=10_000_000))
    assert small.edges == 1 and small.shields == 0
    # One edge straight on the origin: what one edge asks for (measured: 26.7-27.3/s).
    assert small.origin_requests_per_s == pytest.approx(
        upstream_rps(1, 3, 0.2133, DEFAULT_PARTS), abs=0.1)
    assert million.shields > 0 and ten_million.shields > million.shields
    # Shield levels keep the origin's side narrow: a handful of shields face it at any size.
    assert ten_million.origin_requests_per_s <= 4 * small.origin_requests_per_s


def test_edges_scale_with_listeners_at_the_planned_utilisation() -> None:
    p = make_plan(Inputs(listeners=1_000_000, edge_capacity=10_000, utilisation=0.5))
    assert p.edges == pytest.approx(1_000_000 * 2 / 0.2133 / 5_000, abs=1)


def test_behind_a_cdn_requests_are_billed_and_our_fleet_is_a_shield() -> None:
    p = make_plan(Inputs(listeners=1_000_000, cdn=True))
    assert p.edges == 0 and p.shields >= 1
    assert p.cost_breakdown["cdn_requests"] > p.cost_breakdown["cdn_egress"]
    assert any("request fees" in n for n in p.notes)


@pytest.mark.parametrize("inputs", [Inputs(listeners=0), Inputs(listeners=10, part_target=0),
                                    Inputs(listeners=10, utilisation=1.5)])
def test_impossible_numbers_are_refused(inputs: Inputs) -> None:
    with pytest.raises(PlanError):
        make_plan(inputs)


def test_plan_command_prints_json_and_refuses_nonsense() -> None:
    ok = subprocess.run([sys.executable, "-m", "townsquare", "plan", "--listeners", "1000000",
                         "--json"], capture_output=True, text=True, timeout=30, check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["listeners"] == 1_000_000
    table = subprocess.run([sys.executable, "-m", "townsquare", "plan", "--listeners", "5000",
                            "--cdn"], capture_output=True, text=True, timeout=30, check=False)
    assert table.returncode == 0 and "cost per hour" in table.stdout
    bad = subprocess.run([sys.executable, "-m", "townsquare", "plan", "--listeners", "0"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert bad.returncode != 0 and "at least 1" in bad.stderr


# --- the model against the committed benchmark results ------------------------------------

OFFLOAD = Path(__file__).parents[1] / "bench" / "results" / "offload.json"


def test_default_edge_capacity_is_what_the_committed_offload_run_measured() -> None:
    measured = edge_capacity_from(json.loads(OFFLOAD.read_text()))
    assert measured == MEASURED_EDGE, (
        f"tests/bench/results/offload.json now says {measured}; copy it to capacity/measured.py")
    assert Inputs(listeners=1).edge_capacity == MEASURED_EDGE.requests_per_s


def test_model_stays_within_ten_percent_of_every_committed_offload_step() -> None:
    steps = json.loads(OFFLOAD.read_text())["steps"]
    model = upstream_rps(1, 3, 0.2133, DEFAULT_PARTS)
    assert {s["listeners"] for s in steps} >= {10, 1000}
    for step in steps:
        assert step["origin_requests_per_s"] == pytest.approx(model, rel=0.10), step["listeners"]


def test_edge_capacity_is_read_from_the_largest_step_that_measured_the_edge() -> None:
    def step(listeners: int, per_cpu_second: int, **extra: object) -> dict[str, object]:
        return {"listeners": listeners, "listener_requests_per_s": 9.4 * listeners,
                "edge_cpu_seconds": 5.0, "edge_requests_per_cpu_second": per_cpu_second,
                "errors": {}, "client_saturated": False, **extra}

    run = {"command": "python -m tests.bench.offload",
           "steps": [step(100, 12_000), step(1000, 30_000),
                     step(3000, 39_000, client_saturated=True),
                     step(2000, 35_000, errors={"http_503": 3})]}
    got = edge_capacity_from(run)
    assert (got.listeners, got.requests_per_s) == (1000, 30_000)
    with pytest.raises(NoUsableStep):
        edge_capacity_from({"steps": [step(3000, 39_000, client_saturated=True)]})
