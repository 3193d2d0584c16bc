"""Going live to a waiting audience: listener pages opened on a room before anyone speaks
(the crowd that waits for an announced start) hear the speaker within seconds of the room
going on air.

While the room waits, each page keeps trying the room's master and backs off (1, 2, 4, 8 s);
when its status poll sees the room live it asks again at once. That ask comes before the room
has the whole segments players need for a start, and is held at the origin until it has them
(`Origin._announcement`): answered 404 there, the page fell back to its back-off and heard
the room a whole step later. An edge may also still hold the 404 of a page's try just before
the start: the page's back-off starts again from its first step when it asks again.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.faults.drill import ROOM, Listeners, Speaker, Stack
from tests.support.browser import chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Long enough for a waiting page's back-off to reach its longest step (1 + 2 + 4 + 8 s).
WAITING_SECONDS = 16
# From the speaker's first byte: the room goes live at once, the master needs two whole
# segments (3.84 s) and the encoder's first parts, the page a second to poll and play.
# A page sent back to its 8 s back-off takes longer.
HEARD_WITHIN = 8.0


def test_pages_waiting_for_a_room_hear_it_within_seconds_of_going_live(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    speaker: Speaker | None = None
    try:
        stack.start_ingest()
        stack.start_edge()
        publish_url = stack.create_room()
        with chromium() as browser:
            pages = {}
            for name in ("first", "second"):
                page = browser.new_context().new_page()  # two listeners, two caches
                page.goto(f"{stack.edge_url}/listen/{ROOM}")
                pages[name] = page
            listeners = Listeners(pages)
            listeners.watch(WAITING_SECONDS, interval=1.0)
            assert {s for _, got in listeners.samples for s in got.values()} == {0.0}
            # One of a crowd's pages always tried a moment ago: the edge holds the 404 it got
            # (for the origin's max-age, 2 s) when the room goes live.
            master = httpx.get(f"{stack.edge_url}/live/{ROOM}/master.m3u8", timeout=10)
            assert master.status_code == 404, master.text
            speaker = Speaker(publish_url, tmp_path / "speaker.log")
            began, began_wall = time.monotonic(), time.time()
            speaker.start()
            first_move = listeners.wait_playing(timeout=30)
            room = stack.room()
        assert room["state"] == "live", room
        live_at = datetime.fromisoformat(room["started_at"]).timestamp() - began_wall
        heard = {name: round(t - began, 2) for name, t in first_move.items()}
        print(f"room live {live_at:.2f} s after the speaker began; pages heard it at {heard}")
        for name, seconds in heard.items():
            assert seconds <= HEARD_WITHIN, (name, heard, (tmp_path / "speaker.log").read_text())
    finally:
        if speaker is not None:
            speaker.stop()
        stack.stop()
