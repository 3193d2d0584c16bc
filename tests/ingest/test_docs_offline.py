"""The control API's docs render in Chromium with every address outside this machine blocked:
a closed studio network gets Swagger UI and ReDoc from the service itself."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.ingest.support import Ingest, ingest_service
from tests.support.browser import CHROMIUM, chromium

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium"),
]


@pytest.fixture(scope="module")
def ingest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingest]:
    with ingest_service(tmp_path_factory.mktemp("docs")) as service:
        yield service


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def _offline_page(browser: Any) -> tuple[Any, list[tuple[str, str]]]:
    """A page whose requests to anywhere but 127.0.0.1 fail, as in a closed network; the list
    collects the (resource type, URL) of each it tried."""
    context = browser.new_context()
    outside: list[tuple[str, str]] = []

    def route(r: Any) -> None:
        if urlsplit(r.request.url).hostname == "127.0.0.1":
            r.continue_()
        else:
            outside.append((r.request.resource_type, r.request.url))
            r.abort("internetdisconnected")

    context.route("**/*", route)
    return context.new_page(), outside


def test_swagger_ui_lists_the_operations_without_internet(ingest: Ingest, browser: Any) -> None:
    page, outside = _offline_page(browser)
    page.goto(f"{ingest.control}/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=20_000)
    operations = {
        (block.query_selector(".opblock-summary-method").inner_text(),
         block.query_selector(".opblock-summary-path").inner_text().replace("\u200b", ""))
        for block in page.query_selector_all(".opblock")
    }
    assert {("POST", "/rooms"), ("GET", "/rooms/{room}")} <= operations, operations
    assert page.title() == "townsquare ingest - Swagger UI"
    # An operation opens and shows its parameters: the bundle's script works, not only its CSS.
    page.click(".opblock-get .opblock-summary")
    page.wait_for_selector(".opblock-body", timeout=10_000)
    assert outside == []
    page.context.close()


def test_redoc_renders_the_operations_without_internet(ingest: Ingest, browser: Any) -> None:
    page, outside = _offline_page(browser)
    page.goto(f"{ingest.control}/redoc")
    page.wait_for_selector("[data-section-id^='operation/']", timeout=20_000)
    text = page.inner_text("body")
    assert "townsquare ingest" in text and "/rooms" in text
    # ReDoc's own "API docs by Redocly" badge is an image on its CDN: it stays blank offline,
    # and nothing else is fetched from outside.
    assert all(kind == "image" for kind, _ in outside), outside
    page.context.close()


def test_docs_assets_are_served_by_the_control_api(ingest: Ingest) -> None:
    html = httpx.get(f"{ingest.control}/docs", timeout=10).text
    assert "cdn." not in html and "/static-offline-docs/swagger-ui-bundle.js" in html
    js = httpx.get(f"{ingest.control}/static-offline-docs/swagger-ui-bundle.js", timeout=10)
    assert js.status_code == 200 and len(js.content) > 100_000
