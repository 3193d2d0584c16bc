"""Headless Chromium plays /listen/{room} through the edge and through edge → shield → origin."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.edge.conftest import ROOM, Node, counters
from tests.support.browser import chromium

pytestmark = pytest.mark.browser


def _listen(browser: Any, url: str, seconds: float = 8.0) -> dict[str, Any]:
    page = browser.new_page()
    try:
        page.goto(url)
        page.wait_for_function(
            "() => document.querySelector('audio').currentTime > 0.5", timeout=30_000)
        start = page.evaluate("document.querySelector('audio').currentTime")
        time.sleep(seconds)
        result: dict[str, Any] = page.evaluate(
            """(start) => ({
                advanced: document.querySelector('audio').currentTime - start,
                fatal: window.townsquare.fatal,
                errors: window.townsquare.errors,
                latency: window.townsquare.latency,
                state: window.townsquare.state,
                listeners: window.townsquare.listeners,
            })""", start)
        return result
    finally:
        page.close()


def test_chromium_plays_through_the_edge_and_the_chain(
        origin: Node, edge_factory: Callable[..., Node]) -> None:
    edge = edge_factory(origin.url)
    shield = edge_factory(origin.url)
    lower = edge_factory(shield.url)
    with chromium() as browser:
        results = {name: _listen(browser, f"{node.url}/listen/{ROOM}")
                   for name, node in (("edge", edge), ("chain", lower))}
    for name, node in (("edge", edge), ("chain", lower)):
        results[name]["edge_requests"] = counters(node.url, "townsquare_edge_requests_total")
        results[name]["upstream"] = counters(node.url, "townsquare_edge_upstream_requests_total")
    print(results)
    for name, r in results.items():
        assert r["fatal"] is None, (name, r)
        assert r["advanced"] > 6.0, (name, r)
        assert r["latency"] is not None and 0 < r["latency"] < 2.0, (name, r)
        assert r["state"] == "playing", (name, r)
        assert not [k for k in r["edge_requests"] if k[1].startswith("4") and k[0] != "other"], r
        assert r["listeners"] == 1, (name, r)
