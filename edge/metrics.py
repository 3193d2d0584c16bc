"""Edge counters: plain integers on the hot path, rendered as Prometheus text on demand."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from serving.lag import LAG


class EdgeMetrics:
    """Every number /metrics shows. Gauges are read through `gauges` callbacks at scrape time."""

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.hits: defaultdict[str, int] = defaultdict(int)
        self.misses: defaultdict[str, int] = defaultdict(int)
        self.coalesced: defaultdict[str, int] = defaultdict(int)
        self.local_answers = 0
        # Plain live playlist requests answered with the newest copy held (brought by a blocking
        # answer) instead of the one cached under their own URL.
        self.plain_refreshed = 0
        # Full playlists rebuilt from a delta update and the full copy held (`hls.delta`).
        self.playlists_rebuilt = 0
        self.stale: defaultdict[str, int] = defaultdict(int)
        self.negative_hits: defaultdict[str, int] = defaultdict(int)
        self.upstream: defaultdict[tuple[str, str], int] = defaultdict(int)
        # Requests that waited out a failing upstream, by kind and outcome (answered once it
        # came back, or gave up at the end of the hold).
        self.outage_holds: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.rejected: defaultdict[str, int] = defaultdict(int)
        # Requests that name nothing (bad paths, impossible parts), answered by the edge itself:
        # not shedding, so counted apart from `rejected`.
        self.refused: defaultdict[str, int] = defaultdict(int)
        # Audience reports from child edges, by outcome (accepted, dropped, malformed).
        self.reports: defaultdict[str, int] = defaultdict(int)
        self.bytes_out = 0
        self.connections_total = 0
        # (waiters, seconds) of the most recent answer handed to more than one client.
        self.last_fanout: tuple[int, float] = (0, 0.0)
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.room_gauge: Callable[[], dict[str, int]] = dict
        self.audience_gauge: Callable[[], dict[str, int]] = dict
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(self))
        self._registry.register(LAG)  # the process's own, shown with the edge's figures

    def render(self) -> bytes:
        return generate_latest(self._registry)


class _Collector:
    def __init__(self, m: EdgeMetrics) -> None:
        self.m = m

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Metric]:
        m = self.m
        c = CounterMetricFamily(
            "townsquare_edge_requests", "Client requests by kind and status", labels=["kind", "status"])
        for (kind, status), n in sorted(m.requests.items()):
            c.add_metric([kind, str(status)], n)
        yield c
        for name, doc, series in (
            ("townsquare_edge_cache_hits", "Answered from cache", m.hits),
            ("townsquare_edge_cache_misses", "Needed an upstream answer", m.misses),
            ("townsquare_edge_coalesced_waits", "Misses that joined a request in flight",
             m.coalesced),
            ("townsquare_edge_stale_served", "Stale copies served because the upstream failed",
             m.stale),
            ("townsquare_edge_negative_hits", "Answered from a cached negative answer",
             m.negative_hits),
        ):
            c = CounterMetricFamily(name, doc, labels=["kind"])
            for kind, n in sorted(series.items()):
                c.add_metric([kind], n)
            yield c
        c = CounterMetricFamily(
            "townsquare_edge_upstream_requests", "Requests sent upstream by kind and outcome",
            labels=["kind", "outcome"])
        for (kind, outcome), n in sorted(m.upstream.items()):
            c.add_metric([kind, outcome], n)
        yield c
        c = CounterMetricFamily(
            "townsquare_edge_outage_holds", "Upstream requests that waited out a failing "
            "upstream instead of failing at once, by kind and outcome", labels=["kind", "outcome"])
        for (kind, outcome), n in sorted(m.outage_holds.items()):
            c.add_metric([kind, outcome], n)
        yield c
        c = CounterMetricFamily(
            "townsquare_edge_rejected", "Requests or connections refused by reason",
            labels=["reason"])
        for reason, n in sorted(m.rejected.items()):
            c.add_metric([reason], n)
        yield c
        c = CounterMetricFamily(
            "townsquare_edge_refused", "Requests naming nothing, refused without an upstream "
            "request, by reason", labels=["reason"])
        for reason, n in sorted(m.refused.items()):
            c.add_metric([reason], n)
        yield c
        c = CounterMetricFamily(
            "townsquare_edge_child_reports", "Audience reports from child edges by outcome",
            labels=["outcome"])
        for outcome, n in sorted(m.reports.items()):
            c.add_metric([outcome], n)
        yield c
        yield CounterMetricFamily(
            "townsquare_edge_local_answers",
            "Blocking playlist requests answered from a cached playlist", value=m.local_answers)
        yield CounterMetricFamily(
            "townsquare_edge_plain_refreshed",
            "Plain live playlist requests answered with the newest copy a blocking answer "
            "brought, not the one cached under their URL", value=m.plain_refreshed)
        yield CounterMetricFamily(
            "townsquare_edge_playlists_rebuilt",
            "Full live playlists rebuilt from a delta update and the full copy held",
            value=m.playlists_rebuilt)
        yield CounterMetricFamily(
            "townsquare_edge_bytes_out", "Response bytes written to clients", value=m.bytes_out)
        yield CounterMetricFamily(
            "townsquare_edge_connections", "Client connections accepted",
            value=m.connections_total)
        yield GaugeMetricFamily(
            "townsquare_edge_last_fanout_waiters", "Clients answered by the last shared answer",
            value=m.last_fanout[0])
        yield GaugeMetricFamily(
            "townsquare_edge_last_fanout_seconds", "Time to write the last shared answer to all",
            value=m.last_fanout[1])
        for name, (doc, read) in m.gauges.items():
            yield GaugeMetricFamily(name, doc, value=read())
        g = GaugeMetricFamily(
            "townsquare_edge_listeners",
            "Estimated distinct clients per room over the listener window", labels=["room"])
        for room, n in sorted(m.room_gauge().items()):
            g.add_metric([room], n)
        yield g
        g = GaugeMetricFamily(
            "townsquare_edge_audience",
            "Listeners per room on this edge and every edge below it (own estimate plus the "
            "fresh reports of child edges)", labels=["room"])
        for room, n in sorted(m.audience_gauge().items()):
            g.add_metric([room], n)
        yield g
