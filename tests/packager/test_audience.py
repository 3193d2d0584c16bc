"""The origin side of audience reports: the board (packager/audience.py), the origin taking the
reports its playlist requests carry, and the tier passing them on to the room's owner unchanged.
The origin and the tier are the real apps on real sockets, in this process."""

from __future__ import annotations

import contextvars
import time
from pathlib import Path

import httpx
from prometheus_client import generate_latest
from starlette.datastructures import Headers

from hls.audience import MAX_COUNT
from packager.audience import AudienceBoard, relay_report, relayed_report
from packager.origin import StoreLive, build_app
from packager.store import LocalStore
from registry import Registry, default_url
from tests.packager.test_tier import _own, serving_tier
from tests.support.serve import serving

EDGE = {"Townsquare-Edge": "a1b2c3d4e5f6", "Townsquare-Audience": "12"}


def test_the_audience_is_the_sum_of_each_reporters_latest_count() -> None:
    board = AudienceBoard()
    now = time.time()
    board.report("square", "shield-a", 40, now)
    board.report("square", "shield-b", 25, now)
    board.report("square", "shield-a", 30, now + 1)
    assert board.total("square", now + 1) == 55
    assert board.total("elsewhere", now + 1) == 0
    assert board.total("square", now + 16) == 0  # both reports have gone stale


def test_counts_are_clamped_and_bad_reports_ignored() -> None:
    board = AudienceBoard()
    now = time.time()
    board.report("clamped", "e1", 10**12, now)
    board.report("clamped", "e2", -4, now)
    assert board.total("clamped", now) == MAX_COUNT
    for headers in ({"Townsquare-Edge": "e3"},  # no count
                    {"Townsquare-Edge": "e3", "Townsquare-Audience": "many"},
                    {"Townsquare-Edge": "e 3", "Townsquare-Audience": "4"},
                    {"Townsquare-Audience": "4"}):
        board.report_headers("ignored", Headers(headers), now)
    assert board.total("ignored", now) == 0
    board.report_headers("taken", Headers({"townsquare-edge": "e4", "TOWNSQUARE-AUDIENCE": "4"}),
                         now)
    assert board.total("taken", now) == 4


def test_the_board_is_bounded_and_keeps_counting_what_it_holds() -> None:
    board = AudienceBoard(max_rooms=2, max_reporters=2)
    now = time.time()
    for room in ("r1", "r2", "r3"):
        for edge in ("a", "b", "c"):
            board.report(room, edge, 1, now)
    assert board.rooms == 2 and board.reporters == 4
    assert board.total("r1", now) == 2 and board.total("r3", now) == 0


def test_the_audience_per_room_is_a_metric() -> None:
    board = AudienceBoard()
    board.report("metered", "edge-1", 17, time.time())
    text = generate_latest().decode()
    assert 'townsquare_origin_audience{room="metered"} 17.0' in text
    assert "townsquare_origin_audience_rooms" in text
    assert 'townsquare_origin_audience_reports_total{outcome="accepted"}' in text
    del board


def test_a_relayed_report_belongs_to_the_request_that_carried_it() -> None:
    def answer(headers: dict[str, str]) -> dict[str, str] | None:
        relay_report(Headers(headers))
        return relayed_report()

    assert contextvars.copy_context().run(answer, EDGE) == EDGE
    assert contextvars.copy_context().run(answer, {}) is None
    assert relayed_report() is None  # nothing leaked into this context




async def test_reports_reach_the_owners_board_through_the_tier(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "data")
    board = AudienceBoard()
    registry = await Registry.open(default_url(tmp_path / "db"))
    try:
        async with serving(build_app(store, StoreLive(store, 0.5), audience=board)) as owner:
            await _own(registry, "relayed", {"a": owner}, "a")
            async with serving_tier(tmp_path / "data", registry) as tier, \
                    httpx.AsyncClient(timeout=10) as c:
                # Nothing is on air: the owner answers from the (empty) store, and has taken
                # the report on the way.
                r = await c.get(f"{tier}/live/relayed/aac96/live.m3u8", headers=EDGE)
                assert r.status_code == 404
                assert board.total("relayed", time.time()) == 12
                r = await c.get(f"{tier}/live/relayed/aac96/live.m3u8",
                                headers={**EDGE, "Townsquare-Audience": "oops"})
                assert r.status_code == 404  # a malformed report is no error...
                assert board.total("relayed", time.time()) == 12  # ...and changes nothing
                await c.get(f"{tier}/live/relayed/aac96/live.m3u8",
                            headers={**EDGE, "Townsquare-Audience": "15"})
                assert board.total("relayed", time.time()) == 15  # the latest count counts
    finally:
        await registry.close()
        store.close()
