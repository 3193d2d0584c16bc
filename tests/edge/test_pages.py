"""The edge's pages in headless Chromium against `townsquare up --demo demo`.

One stack and one browser for the walk a newcomer takes: the directory lists the demo room
with its title and speaker; a click opens the listener page, which plays the room (its own
meter hears the sound) and shows the speaker talking; muting the speaker shows on the page;
both pages fit a phone's width; once the room ends the page offers the recording, which plays
and seeks, and the directory lists it under replays.

The browser runs without Chromium's autoplay switch, as a listener's does: a page opened
directly waits for a click before it plays; one reached by a click in the directory plays
at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.browser import BASE_FLAGS, CHROMIUM
from tests.support.screenshot import DEMO, DESKTOP, PHONE, DemoStack, demo_stack

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NO_AUTOPLAY = [f for f in BASE_FLAGS if not f.startswith("--autoplay-policy")]
PLAYED = "(t) => document.querySelector('audio').currentTime > t"


@contextmanager
def chromium_as_listeners_have_it() -> Iterator[Any]:
    """Debian's Chromium with its default autoplay policy: sound needs a user gesture."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=NO_AUTOPLAY)
        try:
            yield browser
        finally:
            browser.close()


def _status(stack: DemoStack, ok: Callable[[dict[str, Any]], bool],
            timeout: float = 30.0) -> dict[str, Any]:
    """The demo room's status.json through the edge, once `ok` holds for it."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        r = httpx.get(f"{stack.edge}/live/{DEMO}/status.json", timeout=5)
        last = r.json() if r.status_code == 200 else r.status_code
        if isinstance(last, dict) and ok(last):
            return last
        time.sleep(0.5)
    raise AssertionError(f"status.json never matched: {last}")


def _no_horizontal_scroll(page: Any) -> bool:
    return bool(page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"))


def test_directory_listener_and_replay_pages_in_chromium(tmp_path: Path) -> None:
    with demo_stack(tmp_path) as stack, chromium_as_listeners_have_it() as browser:
        status = _status(stack, lambda s: s["state"] == "live" and bool(s["speakers"]))
        title, speaker = status["title"], status["speakers"][0]
        assert title and speaker["name"], status
        sid = speaker["id"]

        # The directory lists the demo room: title, speaker, audience, how long it is on air.
        page = browser.new_page(viewport=DESKTOP)
        page.goto(f"{stack.edge}/")
        # (the directory is refreshed every 5 s, its speaker names every 5 s at the origin)
        card = page.locator(f'#live li[data-room="{DEMO}"]', has_text=speaker["name"])
        card.wait_for(timeout=30_000)
        text = card.inner_text()
        assert title in text and speaker["name"] in text and "live for" in text, text
        assert page.locator("#empty").is_hidden()

        # A click opens its listener page, and counts as the gesture that lets it play.
        card.locator("a").click()
        page.wait_for_url(f"**/listen/{DEMO}")
        page.wait_for_function(PLAYED, arg=1.0, timeout=30_000)
        page.wait_for_function("() => window.townsquare.sound > -45", timeout=10_000)
        assert not page.evaluate("window.townsquare.needGesture")
        assert page.text_content("#title") == title
        assert page.get_attribute("#badge", "data-room-state") == "live"
        talking = page.locator(f'#speakers li[data-speaker-id="{sid}"][data-speaking="true"]')
        talking.wait_for(timeout=15_000)
        assert speaker["name"] in talking.inner_text()
        page.wait_for_function("() => window.townsquare.audience >= 1", timeout=20_000)
        assert int(page.text_content("#audience") or "0") >= 1

        # The status follows the room: the speaker muted, then heard again.
        mute = f"{stack.control}/rooms/{DEMO}/speakers/{sid}/mute"
        httpx.post(mute, json={"muted": True}, headers=stack.auth).raise_for_status()
        page.locator(f'#speakers li[data-speaker-id="{sid}"][data-muted="true"]'
                     '[data-speaking="false"]').wait_for(timeout=10_000)
        httpx.post(mute, json={"muted": False}, headers=stack.auth).raise_for_status()
        talking.wait_for(timeout=10_000)

        # Opened directly by a new visitor, the page asks for a click first. Nothing here may
        # look into the page until it has asked: Playwright evaluates scripts in a page as
        # if the user had acted on it, which gives the page leave to play. So the test waits
        # for the page's own console line, which needs no evaluation.
        visitor = browser.new_context(viewport=DESKTOP)
        try:
            direct = visitor.new_page()
            with direct.expect_console_message(lambda m: "only after a click" in m.text,
                                               timeout=20_000):
                direct.goto(f"{stack.edge}/listen/{DEMO}")
            assert direct.evaluate("window.townsquare.needGesture")
            assert "Click to listen" in (direct.text_content("#play") or "")
            direct.click("#play")
            direct.wait_for_function("() => window.townsquare.state === 'playing'",
                                     timeout=20_000)
        finally:
            visitor.close()

        # A phone's width: neither page scrolls sideways.
        phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
        try:
            small = phone.new_page()
            small.goto(f"{stack.edge}/")
            small.locator(f'#live li[data-room="{DEMO}"]').wait_for(timeout=15_000)
            assert _no_horizontal_scroll(small)
            small.goto(f"{stack.edge}/listen/{DEMO}")
            small.locator(f'#speakers li[data-speaker-id="{sid}"]').wait_for(timeout=15_000)
            assert _no_horizontal_scroll(small)
            assert small.locator("#play").is_visible()
        finally:
            phone.close()

        # The room ends: the page that was playing it offers the recording instead.
        httpx.post(f"{stack.control}/rooms/{DEMO}/end", headers=stack.auth).raise_for_status()
        page.wait_for_function("() => window.townsquare.mode === 'replay'", timeout=30_000)
        assert page.get_attribute("#badge", "data-room-state") == "ended"
        assert page.evaluate("document.querySelector('audio').controls")
        page.click("#play")
        page.wait_for_function(PLAYED, arg=1.0, timeout=20_000)
        duration = page.evaluate("document.querySelector('audio').duration")
        assert 5 < duration < 3600, duration
        # Seekable like any recording: jump near the end and it plays on from there.
        page.evaluate("(d) => { document.querySelector('audio').currentTime = d - 3; }", duration)
        page.wait_for_function(PLAYED, arg=duration - 2.5, timeout=20_000)
        assert page.evaluate("window.townsquare.fatal") is None

        # The directory has no live room now, and the demo room under replays.
        page.goto(f"{stack.edge}/")
        replay = page.locator(f'#replays li[data-room="{DEMO}"]')
        replay.wait_for(timeout=20_000)
        assert title in replay.inner_text()
        assert page.locator("#empty").is_visible()
        assert "townsquare rooms create" in page.inner_text("#empty")
