"""Headless Debian Chromium driven by Playwright (never `playwright install`)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

BASE_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
FAKE_MIC_FLAGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
]


@contextmanager
def chromium(fake_mic: bool = False, extra_args: Sequence[str] = ()) -> Iterator[Any]:
    """Yield a Playwright Browser running Debian's Chromium headless."""
    from playwright.sync_api import sync_playwright

    flags = BASE_FLAGS + (FAKE_MIC_FLAGS if fake_mic else []) + list(extra_args)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        try:
            yield browser
        finally:
            browser.close()
