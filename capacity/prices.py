"""Public list prices the plan's costs use. They change: every figure here is a flag of
`townsquare plan`, and docs/scaling.md states the date they were read for.

AWS on-demand, us-east-1, read from the public price pages (not from an API: the plan must
work offline): a c7g.xlarge (4 vCPU Graviton3, 8 GiB) at $0.145 per hour; data transfer out
to the internet at $0.09 per GB for the first 10 TB of a month, $0.085 up to 50 TB, $0.07 up
to 150 TB and $0.05 beyond; CloudFront, North America, $0.085 per GB for the first 10 TB,
falling to $0.02 beyond 5 PB (we use $0.03, the 1–5 PB tier a large event reaches), and
$0.0100 per 10 000 HTTPS requests.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True)
class Prices:
    instance_hour: float = 0.145           # one edge or shield instance
    instance_cores: int = 4                # edge processes per instance (one per core)
    egress_per_gb: float = 0.05            # own egress at volume (> 150 TB a month)
    cdn_per_gb: float = 0.03               # CDN egress at volume
    cdn_per_10k_requests: float = 0.0100   # CDN HTTPS requests
    origin_hour: float = 0.145             # each origin tier / ingest instance
