"""The capacity model: what N listeners cost, in machines, requests, bits and dollars.

A low-latency listener makes two requests per part (the blocking playlist reload and the
part; hls.js and the simulated listeners of `townsquare loadtest` both do), so a listener
costs `2 / part_target` requests a second wherever it connects, whatever the audience. An
edge holds `edge_capacity` requests a second per process; every edge asks its upstream once
per object, so one level up the load is `edges × renditions × 2 / part_target` whatever
the number of listeners: the origin's load depends on how many shields there are, not on
the audience. With a CDN in front, the CDN's points of presence play the part of edges and
bill each listener request.

The default `edge_capacity` is measured, not assumed: `capacity.measured.MEASURED_EDGE`, the
listener requests one edge process answered per second of its CPU in the committed offload
benchmark (tests/bench/results/offload.json, `python -m tests.bench.offload`), read by
`capacity.measured.edge_capacity_from`; tests/capacity keeps the two in step. The same results
check `upstream_rps`: what one edge asked of the origin at every step lands within 10 % of it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from capacity.measured import MEASURED_EDGE
from capacity.prices import GB, Prices

# Requests/s one edge process holds: the offload benchmark's figure (see capacity.measured).
MEASURED_EDGE_RPS = float(MEASURED_EDGE.requests_per_s)
LIST_PRICES = Prices()


# The default ladder's part durations: two AAC renditions (10 frames of 1024 samples at
# 48 kHz) and one Opus (10 frames of 960). Each rendition costs an upstream two requests
# per part of its own.
DEFAULT_PARTS = (0.21333, 0.21333, 0.2)


class PlanError(ValueError):
    """Numbers a plan cannot be made from."""


@dataclass(frozen=True)
class Inputs:
    listeners: int
    part_target: float = 0.2133          # seconds: 10 AAC frames of 1024 samples at 48 kHz
    renditions: int = 3
    # Each rendition's part duration when known (the default ladder's); None: all of them
    # `part_target`, as when --part-target or --renditions are given.
    parts: tuple[float, ...] | None = DEFAULT_PARTS
    edge_capacity: float = MEASURED_EDGE_RPS  # requests/s per edge process
    utilisation: float = 0.6             # plan edges to run at this share of their capacity
    edges_per_shield: int = 64           # fan-in of one shield process
    bitrate_kbps: float = 96.0           # the rendition most listeners play
    playlist_bytes: int = 900            # a delta playlist update (_HLS_skip=YES)
    cdn: bool = False
    cdn_pops: int = 400                  # CDN cache nodes that each ask upstream once


@dataclass(frozen=True)
class Plan:
    listeners: int
    requests_per_listener: float
    listener_requests_per_s: float
    edges: int
    edge_instances: int
    shields: int
    shield_instances: int
    origin_requests_per_s: float
    egress_gbit_s: float
    cost_per_hour: float
    cost_breakdown: dict[str, float]
    notes: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def upstream_rps(nodes: int, renditions: int, part_target: float,
                 parts: tuple[float, ...] | None = None) -> float:
    """Requests a second that `nodes` coalescing caches send one level up: one blocking
    playlist and one part per part of every rendition (`parts`: each rendition's part
    duration; else `renditions` of `part_target`), plus a master or an init now and then
    (a 1 % allowance)."""
    durations = parts if parts is not None else (part_target,) * renditions
    return nodes * sum(2 / d for d in durations) * 1.01


def make_plan(i: Inputs, prices: Prices = LIST_PRICES) -> Plan:
    if i.listeners < 1:
        raise PlanError("--listeners must be at least 1")
    if not 0.05 <= i.part_target <= 2.0:
        raise PlanError("--part-target must be between 0.05 and 2 seconds")
    if i.renditions < 1 or i.edge_capacity <= 0 or not 0 < i.utilisation <= 1:
        raise PlanError("renditions ≥ 1, edge capacity > 0 and utilisation in (0, 1]")
    per_listener = 2 / i.part_target
    listener_rps = i.listeners * per_listener
    per_listener_bits = i.bitrate_kbps * 1000 * 1.08 + i.playlist_bytes * 8 / i.part_target
    egress_bps = i.listeners * per_listener_bits
    notes: list[str] = []
    cost: dict[str, float] = {}
    hours_per_gb = 3600 * egress_bps / 8 / GB  # GB per hour
    if i.cdn:
        edges = 0
        # The CDN's nodes ask our edges; our edges act as its shield.
        cdn_upstream = upstream_rps(i.cdn_pops, i.renditions, i.part_target, i.parts)
        shields = max(1, math.ceil(cdn_upstream / (i.edge_capacity * i.utilisation)))
        origin = upstream_rps(shields, i.renditions, i.part_target, i.parts)
        cost["cdn_egress"] = hours_per_gb * prices.cdn_per_gb
        cost["cdn_requests"] = listener_rps * 3600 / 10_000 * prices.cdn_per_10k_requests
        notes.append(f"the CDN's {i.cdn_pops} nodes each ask once per object: "
                     f"{cdn_upstream:,.0f} requests/s reach our {shields} shield processes")
    else:
        edges = max(1, math.ceil(listener_rps / (i.edge_capacity * i.utilisation)))
        # Shields in levels, each at most `edges_per_shield` wide below it, until one level
        # is narrow enough to face the origin.
        shields, top = 0, edges
        while top > i.edges_per_shield:
            top = math.ceil(top / i.edges_per_shield)
            shields += top
        if shields and top < edges:
            notes.append(f"{shields} shields in {_levels(edges, i.edges_per_shield)} "
                         f"level(s); {top} face the origin")
        origin = upstream_rps(top, i.renditions, i.part_target, i.parts)
        cost["egress"] = hours_per_gb * prices.egress_per_gb
    edge_instances = math.ceil(edges / prices.instance_cores)
    shield_instances = math.ceil(shields / prices.instance_cores)
    cost["edge_instances"] = edge_instances * prices.instance_hour
    cost["shield_instances"] = shield_instances * prices.instance_hour
    cost["origin_tier"] = 2 * prices.origin_hour  # two replicas: the load is flat
    if i.cdn and cost["cdn_requests"] > cost["cdn_egress"]:
        notes.append("at LL-HLS request rates the CDN's request fees exceed its egress fees")
    return Plan(
        listeners=i.listeners, requests_per_listener=round(per_listener, 2),
        listener_requests_per_s=round(listener_rps), edges=edges,
        edge_instances=edge_instances, shields=shields, shield_instances=shield_instances,
        origin_requests_per_s=round(origin, 1), egress_gbit_s=round(egress_bps / 1e9, 2),
        cost_per_hour=round(sum(cost.values()), 2),
        cost_breakdown={k: round(v, 2) for k, v in cost.items()}, notes=notes)


def _levels(edges: int, fan_in: int) -> int:
    levels = 0
    while edges > fan_in:
        edges = math.ceil(edges / fan_in)
        levels += 1
    return levels
