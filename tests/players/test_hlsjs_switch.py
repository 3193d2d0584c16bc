"""hls.js keeps playing when it switches renditions in the middle of a segment.

hls.js 1.7 joins or switches at the last part marked INDEPENDENT=YES before its buffer's end.
When every part carried the mark, a switch in mid-segment left the first parts of that
segment unloaded in the new rendition; at the segment's end hls.js kept choosing the segment
it held whole, loaded nothing and stalled for 6-8 s (until the segment's parts left the
playlist). Eight switches in nine land in mid-segment, so two switches in a row catch that
behaviour in all but one run in 81. The page is the players' hls.js page (`static/hlsjs.html`,
which keeps its player in the global `hls`), given the master playlist.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.edge.conftest import wait_live
from tests.players.pages import serving_pages
from tests.support.browser import chromium
from tests.support.procs import free_port, running

pytestmark = pytest.mark.browser

ROOM = "switchroom"
# After a switch: the next segment boundary comes within 1.92 s plus the buffer hls.js holds
# (~1 s); a stall there lasted 6-8 s, so 6 s of looks see it.
WATCH_SECONDS = 6
# A look every second; half a second of progress per look allows for the time the looks
# themselves take and still fails any stall longer than ~0.5 s (as in test_players).
MIN_ADVANCE_PER_LOOK = 0.5


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(page server URL, edge URL) for a fresh demo room behind a real edge."""
    origin_port, edge_port = free_port(), free_port()
    origin = f"http://127.0.0.1:{origin_port}"
    with serving_pages() as pages, \
            running(["origin", "--demo", ROOM, "--port", str(origin_port), "--data",
                     str(tmp_path / "data")], tmp_path / "origin.log", f"{origin}/healthz"):
        wait_live(origin, ROOM)
        with running(["edge", "--upstream", origin, "--port", str(edge_port)],
                     tmp_path / "edge.log", f"http://127.0.0.1:{edge_port}/healthz"):
            yield pages, f"http://127.0.0.1:{edge_port}"


def _watch(page: Any, seconds: int) -> list[float]:
    points = []
    for _ in range(seconds + 1):
        points.append(float(page.evaluate("window.player.time()")))
        time.sleep(1.0)
    return points


def test_hlsjs_plays_on_through_switches_in_mid_segment(stack: tuple[str, str]) -> None:
    pages, edge = stack
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{pages}/hlsjs.html?src={edge}/live/{ROOM}/master.m3u8")
        page.wait_for_function("window.player.time() > 0.5", timeout=30_000)
        levels = page.evaluate("hls.levels.map((l) => l.name)")
        for name in ("aac48", "aac96"):
            index = levels.index(name)
            page.evaluate(f"hls.nextLevel = {index}")  # manual from here: no ABR switch back
            points = _watch(page, WATCH_SECONDS)
            state = page.evaluate("[hls.currentLevel, window.player.fatal, window.player.errors]")
            stalls = [round(b - a, 2) for a, b in itertools.pairwise(points)
                      if b - a < MIN_ADVANCE_PER_LOOK]
            assert not stalls, (name, [round(p, 2) for p in points], state)
            assert state[0] == index and state[1] is None, (name, levels, state)
