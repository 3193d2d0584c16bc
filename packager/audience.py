"""The whole audience of each room, as the edges report it (`hls.audience`).

Edges (or the shields above them) add `Townsquare-Edge` and `Townsquare-Audience` to the
playlist requests they already make. The origin of a room's owner keeps each reporter's latest
count in an `AudienceBoard`; the room's audience is their sum over the reports still fresh. A tier
between edges and owners keeps nothing: it relays the two headers on the forward that answers
the request (`relay_report` / `relayed_report`).

Times are wall-clock seconds (`time.time()`): the same clock status objects are stamped with.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator, Mapping
from contextvars import ContextVar

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily, Metric

from hls.audience import AUDIENCE_HEADER, EDGE_HEADER, FRESH_SECONDS, ReportTable, parse_report

REPORTS = Counter("townsquare_origin_audience_reports_total",
                  "Audience reports from edges by outcome (accepted, dropped: a bound was "
                  "reached, malformed: ignored)", ["outcome"])


class AudienceBoard:
    """Each reporter's latest listener count per room; `total` is the room's audience.

    Bounded: rooms, reporters per room and reports in all (`hls.audience.ReportTable`). With
    shields, an origin hears from a handful of reporters per room; without, from every edge.
    """

    def __init__(self, fresh: float = FRESH_SECONDS, max_rooms: int = 10_000,
                 max_reporters: int = 4096, max_entries: int = 100_000) -> None:
        self._table = ReportTable(fresh, max_rooms, max_reporters, max_entries)
        _BOARDS.add(self)

    def report(self, room: str, reporter: str, count: int, now: float) -> None:
        """`reporter` (an edge id) now counts `count` listeners of `room`; the count is clamped
        to 0..10 000 000. `now`: unix seconds."""
        if not isinstance(count, int) or not isinstance(reporter, str) or not reporter:
            REPORTS.labels("malformed").inc()
            return
        accepted = self._table.report(room, reporter, count, now)
        REPORTS.labels("accepted" if accepted else "dropped").inc()

    def report_headers(self, room: str, headers: Mapping[str, str],
                       now: float | None = None) -> None:
        """Take the report a playlist request for `room` carries, if any; malformed ones are
        counted and ignored."""
        reporter = headers.get(EDGE_HEADER)
        if reporter is None:
            return
        parsed = parse_report(reporter, headers.get(AUDIENCE_HEADER))
        if parsed is None:
            REPORTS.labels("malformed").inc()
            return
        self.report(room, parsed[0], parsed[1], time.time() if now is None else now)

    def total(self, room: str, now: float) -> int:
        """The room's audience: the sum of its fresh reports (0 when none). `now`: unix seconds."""
        return self._table.total(room, now)

    def totals(self, now: float) -> dict[str, int]:
        """Every room with a fresh report and its audience."""
        return self._table.totals(now)

    @property
    def rooms(self) -> int:
        return len(self._table)

    @property
    def reporters(self) -> int:
        return self._table.entries


# -- relaying through the tier -----------------------------------------------------------------
# The tier answers a request by forwarding it, perhaps twice (a failover) or after waiting; the
# report travels with the request's own context rather than through every step of that logic.
_RELAYED: ContextVar[dict[str, str] | None] = ContextVar("townsquare_audience_report",
                                                         default=None)


def relay_report(headers: Mapping[str, str]) -> None:
    """Keep the report headers of the request being answered (none: nothing to relay)."""
    reporter = headers.get(EDGE_HEADER)
    if reporter is None:
        _RELAYED.set(None)
        return
    relayed = {EDGE_HEADER: reporter}
    count = headers.get(AUDIENCE_HEADER)
    if count is not None:
        relayed[AUDIENCE_HEADER] = count
    _RELAYED.set(relayed)


def relayed_report() -> dict[str, str] | None:
    """The report headers to add to the forward answering the current request, unchanged."""
    return _RELAYED.get()


# -- metrics -----------------------------------------------------------------------------------
_BOARDS: weakref.WeakSet[AudienceBoard] = weakref.WeakSet()


class _BoardCollector:
    """Audience per room and the boards' sizes, read at scrape time (reports age out).
    A process normally holds one board; several (tests) are added up."""

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        boards = list(_BOARDS)
        rooms: dict[str, int] = {}
        for board in boards:
            for room, n in board.totals(now).items():
                rooms[room] = rooms.get(room, 0) + n
        audience = GaugeMetricFamily("townsquare_origin_audience",
                                     "Listeners per room on every edge below this origin, "
                                     "as the edges report them", labels=["room"])
        for room, n in sorted(rooms.items()):
            audience.add_metric([room], n)
        yield audience
        yield GaugeMetricFamily("townsquare_origin_audience_rooms",
                                "Rooms with audience reports",
                                value=sum(b.rooms for b in boards))
        yield GaugeMetricFamily("townsquare_origin_audience_reporters",
                                "Audience reports kept (one per room and reporter)",
                                value=sum(b.reporters for b in boards))


REGISTRY.register(_BoardCollector())
