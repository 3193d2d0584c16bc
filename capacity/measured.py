"""What one edge process holds, as measured, and how the figure is read from a benchmark run.

The figure comes from the origin offload benchmark (`python -m tests.bench.offload`, committed
as tests/bench/results/offload.json). At each step one edge process, on a CPU of its own,
serves N simulated hls.js listeners: a blocking playlist reload and a part per part, renditions
spread, so the request mix is the one `townsquare plan` sizes for. The benchmark counts every
request the listeners got answered and the edge's own CPU time over the step.

`edge_capacity_from` takes the largest step whose load generator was not saturated and saw no
error, and divides the requests the edge answered by the CPU seconds it spent: requests per
second of one core, which is what one edge process (one event loop) can hold. Counting CPU
time rather than the load offered makes it the edge's figure, not the client's: on the
reference machine the client runs out of CPU near 20 000 requests/s while the edge is at about
half of its core. Reading it as linear in load errs low (a busier loop answers more
requests per wake-up), and the plan runs edges at 60 % of it besides.

`MEASURED_EDGE` is that reading of the committed results; tests/capacity checks that it still
matches them, so a rerun of the benchmark that moves the figure fails until it is copied here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SOURCE = "tests/bench/results/offload.json"


class NoUsableStep(ValueError):
    """Offload results without a step that measured the edge rather than the client."""


@dataclass(frozen=True)
class EdgeMeasurement:
    requests_per_s: int           # listener requests one edge process answers per CPU second
    listeners: int                # at the step it was read from
    served_requests_per_s: float  # what the listeners got answered at that step
    edge_cpu_seconds: float       # the edge's CPU time over that step
    command: str                  # the benchmark run it comes from
    source: str = SOURCE


def edge_capacity_from(offload: Mapping[str, Any]) -> EdgeMeasurement:
    """The per-edge capacity an offload benchmark result supports (see the module docstring)."""
    usable = [s for s in offload.get("steps", ())
              if not s.get("client_saturated") and not s.get("errors")
              and s.get("edge_cpu_seconds") and s.get("edge_requests_per_cpu_second")]
    if not usable:
        raise NoUsableStep("no step with the edge's CPU time, an unsaturated client and no "
                           "errors: rerun `python -m tests.bench.offload`")
    step = max(usable, key=lambda s: int(s["listeners"]))
    return EdgeMeasurement(
        requests_per_s=int(step["edge_requests_per_cpu_second"]),
        listeners=int(step["listeners"]),
        served_requests_per_s=float(step["listener_requests_per_s"]),
        edge_cpu_seconds=float(step["edge_cpu_seconds"]),
        command=str(offload.get("command", "python -m tests.bench.offload")),
    )


# Read from the committed offload results by `edge_capacity_from` (CPU 1 for origin and edge,
# CPU 0 for the load generator, 2-core machine): at 1 000 listeners the edge answered 9 775
# requests/s for 44 % of its core (at 2 000 the load generator used 95 % of its CPU).
MEASURED_EDGE = EdgeMeasurement(
    requests_per_s=22_336, listeners=1000, served_requests_per_s=9775.2, edge_cpu_seconds=9.35,
    command="python -m tests.bench.offload  (steps [10, 100, 500, 1000, 2000, 3000], 20 s each)")
