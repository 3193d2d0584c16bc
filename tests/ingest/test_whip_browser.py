"""Headless Chromium's fake microphone on the broadcaster page, publishing via WHIP, and the
page reconnecting when its node goes."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.drill import ROOM, TOKEN, Stack
from tests.ingest.support import (
    ffmpeg_publish,
    ingest_service,
    media_playlist,
    recent_audio,
    rms_dbfs,
    tone_db,
    wait_for,
)
from tests.support.browser import CHROMIUM, chromium

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium"),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI"),
]

# Chromium's fake microphone beeps around 400 Hz with overtones up to ~2 kHz; the RTMP
# speakers sing far above it, where the beep's spectrum is 45 dB down.
BEEP = 400.0
TONES = (5500.0, 7500.0)
STATE = "document.getElementById('state').textContent === '{}'"


def test_browser_page_and_two_rtmp_speakers_are_all_in_the_mix(tmp_path: Path) -> None:
    # A session whose audio stops for 3 s is closed (5 s by default): a muted page must
    # still be sending.
    with ingest_service(tmp_path, env={"TOWNSQUARE_WHIP_IDLE_SECONDS": "3"}) as ingest, \
            chromium(fake_mic=True) as browser:
        room = ingest.create_room("panel")
        page = browser.new_page()
        page.goto(room["broadcast_page_url"])
        assert page.text_content("#state") == "idle"
        page.fill("#key", room["stream_key"])
        page.click("#start")
        page.wait_for_function("document.getElementById('state').textContent === 'connected'",
                               timeout=20_000)
        speakers = ingest.room("panel")["speakers"]
        assert [s["kind"] for s in speakers] == ["whip"]

        # The browser alone: the room's audio decodes and is not silence.
        start = media_playlist(ingest.origin, "panel").position[0]
        wait_for(lambda: media_playlist(ingest.origin, "panel").position[0] >= start + 3, 15)
        alone = recent_audio(ingest.origin, "panel", segments=3)
        assert rms_dbfs(alone) > -40, "the browser's microphone is not in the room"
        assert tone_db(alone, BEEP, width=30) > -6

        # Two RTMP co-hosts join: all three are in the program's spectrum.
        pubs = [ffmpeg_publish(ingest.rtmp_url(room["stream_key"]), f, log=tmp_path / f"{f}.log")
                for f in TONES]
        try:
            wait_for(lambda: len(ingest.room("panel")["speakers"]) == 3, 15, what="3 speakers")
            heard: dict[str, Any] = {}

            def all_three() -> bool:
                # Two fresh segments at a time: a publisher that connects on a busy machine
                # may take a moment before its audio flows.
                heard["mix"] = mix = recent_audio(ingest.origin, "panel", segments=2)
                heard["levels"] = {f: tone_db(mix, f, width=30) for f in (BEEP, *TONES)}
                return all(db > -20 for db in heard["levels"].values())

            try:
                wait_for(all_three, 20, interval=1.0, what="all three speakers in the mix")
            except TimeoutError:
                raise AssertionError(heard.get("levels")) from None
            assert float(abs(heard["mix"]).max()) <= 0.95, "the limiter let a peak through"
        finally:
            for p in pubs:
                p.send_signal(signal.SIGINT)
                p.wait(10)

        # Mute from the page: the browser stays connected, its audio leaves the mix.
        page.click("#mute")
        assert page.get_attribute("#mute", "aria-pressed") == "true"
        muted_at = media_playlist(ingest.origin, "panel").position[0]
        wait_for(lambda: media_playlist(ingest.origin, "panel").position[0] >= muted_at + 3, 15)
        assert rms_dbfs(recent_audio(ingest.origin, "panel", segments=2)) < -60
        assert [s["kind"] for s in ingest.room("panel")["speakers"]] == ["whip"]
        assert page.text_content("#state") == "connected"
        page.click("#stop")
        wait_for(lambda: not ingest.room("panel")["speakers"], 10, what="WHIP DELETE")
        assert page.text_content("#state") == "idle"


def test_broadcast_page_reports_a_wrong_key(tmp_path: Path) -> None:
    with ingest_service(tmp_path) as ingest, chromium(fake_mic=True) as browser:
        room = ingest.create_room("wrong-key")
        page = browser.new_page()
        page.goto(room["broadcast_page_url"])
        page.fill("#key", "tsk_wrong")
        page.click("#start")
        page.wait_for_function("document.getElementById('state').textContent === 'error'",
                               timeout=15_000)
        assert "not valid" in (page.text_content("#message") or "")
        assert ingest.room("wrong-key")["state"] == "waiting"
        assert httpx.get(f"{ingest.control}/broadcast/no-such-room").status_code == 404


@pytest.mark.parametrize(("how", "within"), [(signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)],
                         ids=["stopped", "killed"])
def test_the_broadcast_page_reconnects_as_soon_as_its_node_goes(
        tmp_path: Path, how: signal.Signals, within: float) -> None:
    # A deploy stops the node a browser speaker is on, which closes their WebRTC connection
    # as it goes (DTLS close_notify); a node killed outright closes nothing, and its status
    # no longer answers the page's polls. Either way the page reconnects well before ICE
    # gives up (about 7 s here), and is a speaker of the room again once the node is back.
    stack = Stack(tmp_path)
    try:
        stack.start_ingest()
        r = httpx.post(f"{stack.api}/rooms", json={"name": ROOM},
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert r.status_code == 201, r.text
        room = r.json()
        with chromium(fake_mic=True) as browser:
            page = browser.new_page()
            page.goto(room["broadcast_page_url"])
            page.fill("#key", room["stream_key"])
            page.click("#start")
            page.wait_for_function(STATE.format("connected"), timeout=20_000)
            assert stack.ingest is not None
            stopped = time.monotonic()
            stack.ingest.proc.send_signal(how)  # by the pid this test started
            stack.ingest.proc.wait(30)
            page.wait_for_function(STATE.format("reconnecting"), timeout=within * 1000)
            noticed = time.monotonic() - stopped
            up = stack.start_ingest()
            page.wait_for_function(STATE.format("connected"), timeout=30_000)
            wait_for(lambda: [s["kind"] for s in stack.room()["speakers"]] == ["whip"], 15,
                     what="the browser speaker back in the room")
            back = time.monotonic()
        print(f"{how.name}: the page noticed in {noticed:.2f} s; a speaker again "
              f"{back - up:.2f} s after the node was back ({back - stopped:.2f} s after the "
              "signal)")
    finally:
        stack.stop()
