"""The whole audience across a tree of edges, with real processes: `up --demo` (ingest and the
origin) broadcasting a room, a shield in front of the origin and two edges under the shield,
listeners on both edges.

Each edge counts its own listeners and reports the count on the playlist requests it already
sends the shield; the shield adds its children's reports up (and counts none of them as a
listener) and reports the sum to the origin, whose board is the room's audience: in its
metrics, and in the room's status object as every listener reads it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.edge.conftest import Node, counters, wait_live
from tests.support.procs import free_port, running

ROOM = "hall"
ON_A, ON_B = 30, 20


@pytest.fixture
def hall(tmp_path: Path) -> Iterator[Node]:
    """A stack of its own (another test's edges could still have fresh reports at a shared
    origin), without its edge: the test builds the tree."""
    port = free_port()
    with running(["up", "--demo", ROOM, "--no-edge", "--data", str(tmp_path / "data"),
                  "--origin-port", str(port), "--control-port", str(free_port()),
                  "--rtmp-port", str(free_port())], tmp_path / "up.log",
                 f"http://127.0.0.1:{port}/healthz",
                 env={"TOWNSQUARE_ADMIN_TOKEN": "t" * 24}) as svc:
        node = Node(svc, port)
        wait_live(node.url, ROOM)
        yield node


def _listen(client: httpx.Client, edge: Node, who: str, n: int, **headers: str) -> None:
    """One playlist request from each of `n` listeners (told apart by their User-Agent)."""
    for i in range(n):
        r = client.get(f"{edge.url}/live/{ROOM}/aac96/live.m3u8",
                       headers={"user-agent": f"{who}-{i}", **headers})
        assert r.status_code == 200, r.text


def _figures(edge: Node) -> dict[str, Any]:
    figures: dict[str, Any] = httpx.get(f"{edge.url}/api/listeners/{ROOM}", timeout=5).json()
    return figures


def _board(origin: Node) -> float:
    return counters(origin.url, "townsquare_origin_audience").get((ROOM,), 0.0)


def _status_audience(edge: Node) -> int:
    r = httpx.get(f"{edge.url}/live/{ROOM}/status.json", timeout=5)
    assert r.status_code == 200, r.text
    audience: int = r.json()["audience"]
    return audience


def test_two_edges_under_a_shield_add_up_to_the_rooms_audience(
        hall: Node, edge_factory: Callable[..., Node]) -> None:
    shield = edge_factory(hall.url, env={"TOWNSQUARE_EDGE_ACCEPT_REPORTS": "true",
                                         "TOWNSQUARE_EDGE_ID": "shield-1"})
    a = edge_factory(shield.url, env={"TOWNSQUARE_EDGE_ID": "edge-a"})
    b = edge_factory(shield.url, env={"TOWNSQUARE_EDGE_ID": "edge-b"})
    with httpx.Client(timeout=10) as client:
        # Listeners keep polling, as players do; each edge's next request upstream (its copy
        # of the playlist lives about a second) carries its count, and the shield's the sum.
        deadline = time.monotonic() + 20
        while True:
            _listen(client, a, "a", ON_A)
            _listen(client, b, "b", ON_B)
            on_a, on_b, at_shield = _figures(a), _figures(b), _figures(shield)
            own = on_a["listeners"] + on_b["listeners"]
            if at_shield["reported"] == own and _board(hall) == own \
                    and _status_audience(a) == own:
                break
            assert time.monotonic() < deadline, (on_a, on_b, at_shield, _board(hall))
            time.sleep(0.3)

        # Within the estimator's error (distinct clients by linear counting) of the truth.
        assert abs(on_a["listeners"] - ON_A) <= 1 and abs(on_b["listeners"] - ON_B) <= 1
        assert abs(own - (ON_A + ON_B)) <= 2
        assert on_a["reported"] == 0 and on_a["total"] == on_a["listeners"]
        # The shield counts its two children's listeners, never the children themselves.
        assert at_shield["listeners"] == 0
        assert at_shield["total"] == own
        reports = counters(shield.url, "townsquare_edge_child_reports_total")
        assert reports[("accepted",)] > 0 and ("malformed",) not in reports
        assert counters(shield.url, "townsquare_edge_audience")[(ROOM,)] == own

        # An edge listeners reach takes no reports: a client claiming to be an edge with a
        # huge audience is one more listener there, and the room's figure moves by one.
        # The count is an estimate: a new client whose hash lands on a bit already set adds
        # nothing (about one in 800 here), so another claimant is tried then.
        for attempt in range(5):
            _listen(client, b, f"claimant{attempt}", 1, **{"Townsquare-Edge": "fake",
                                                           "Townsquare-Audience": "9999999"})
            on_b_now = _figures(b)["listeners"]
            assert on_b_now in (on_b["listeners"], on_b["listeners"] + 1)
            if on_b_now == on_b["listeners"] + 1:
                break
        assert on_b_now == on_b["listeners"] + 1
        deadline = time.monotonic() + 20
        while _status_audience(b) != own + 1:
            assert time.monotonic() < deadline, (_board(hall), _figures(shield))
            _listen(client, b, "b", ON_B)
            time.sleep(0.3)
        assert _board(hall) == own + 1
