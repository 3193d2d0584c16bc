"""The broadcaster page while live: its display name reaches listeners, and it shows the
room's audience and who is on the mic (GET /rooms/{room}/status, as listeners see it)."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import httpx
import pytest

from tests.ingest.support import ffmpeg_publish, ingest_service, wait_for
from tests.support.browser import CHROMIUM, chromium

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium"),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI"),
]


def test_broadcast_page_names_its_speaker_and_shows_the_room(tmp_path: Path) -> None:
    with ingest_service(tmp_path) as ingest, chromium(fake_mic=True) as browser:
        room = ingest.create_room("studio")
        page = browser.new_page()
        page.goto(room["broadcast_page_url"])
        page.fill("#name", "Ada Lovelace")
        page.fill("#key", room["stream_key"])
        page.click("#start")
        page.wait_for_function("document.getElementById('state').textContent === 'connected'",
                               timeout=20_000)

        # The name rode on the WHIP request: the room's status carries it.
        status_url = f"{ingest.control}/rooms/studio/status"
        wait_for(lambda: [s["name"] for s in httpx.get(status_url).json()["speakers"]]
                 == ["Ada Lovelace"], 15, what="the WHIP speaker's name in the status")

        # A co-host joins over RTMP: the page lists both, itself marked, with the audience.
        pub = ffmpeg_publish(ingest.rtmp_url(room["stream_key"]), 5500.0,
                             log=tmp_path / "rtmp.log")
        try:
            page.wait_for_function("document.querySelectorAll('#speakers li').length === 2",
                                   timeout=20_000)
            names = page.locator("#speakers .name").all_inner_texts()
            assert "Ada Lovelace (you)" in names, names
            # The co-host sings a steady tone: it is shown talking.
            page.locator('#speakers li[data-speaking="true"]').first.wait_for(timeout=15_000)
            assert (page.text_content("#audience") or "").isdigit()
        finally:
            pub.send_signal(signal.SIGINT)
            pub.wait(10)
        page.click("#stop")
        page.wait_for_function("!document.getElementById('name').disabled", timeout=10_000)
