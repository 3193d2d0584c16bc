"""Real origin (demo broadcast) and real edges on free ports, shared where that is safe."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from tests.support.procs import Service, free_port, running

ROOM = "edgeroom"


class Node:
    """A running service and its base URL."""

    def __init__(self, svc: Service, port: int) -> None:
        self.svc = svc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    d = tmp_path_factory.mktemp("origin")
    port = free_port()
    with running(["origin", "--demo", ROOM, "--port", str(port), "--data", str(d / "data")],
                 d / "origin.log", f"http://127.0.0.1:{port}/healthz") as svc:
        node = Node(svc, port)
        wait_live(node.url, ROOM)
        yield node


@pytest.fixture
def edge_factory(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Start edges in front of any upstream; all are stopped at the end of the test."""
    stack: list[AbstractContextManager[Service]] = []

    def make(upstream: str, env: dict[str, str] | None = None) -> Node:
        port = free_port()
        cm = running(["edge", "--upstream", upstream, "--port", str(port)],
                     tmp_path / f"edge-{port}.log", f"http://127.0.0.1:{port}/healthz", env=env)
        svc = cm.__enter__()
        stack.append(cm)
        return Node(svc, port)

    yield make
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


@pytest.fixture
def edge(origin: Node, edge_factory: Callable[..., Node]) -> Node:
    return edge_factory(origin.url)


def wait_live(base: str, room: str, timeout: float = 30.0) -> str:
    """Wait until the room's first media playlist has parts; return its URL path."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            path = media_path(base, room)
            text = httpx.get(base + path, timeout=5).text
            if "#EXT-X-PART:" in text and "#EXT-X-PRELOAD-HINT" in text:
                return path
        except (httpx.HTTPError, LookupError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"room {room} never went live at {base}")


def media_path(base: str, room: str, rendition: str = "aac96") -> str:
    master = httpx.get(f"{base}/live/{room}/master.m3u8", timeout=5)
    master.raise_for_status()
    for line in master.text.splitlines():
        if line == f"{rendition}/live.m3u8":
            return f"/live/{room}/{line}"
    raise LookupError(f"no {rendition} in master playlist")


def next_part(base: str, playlist_path: str) -> tuple[int, int, str]:
    """(msn, part, part path) of the playlist's preload hint, read from `base`."""
    text = httpx.get(base + playlist_path, timeout=5).text
    m = re.search(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="((?:[^"/]+/)?p(\d+)\.(\d+)\.m4s)"', text)
    assert m, text
    folder = playlist_path.rsplit("/", 1)[0]
    return int(m[2]), int(m[3]), f"{folder}/{m[1]}"


def media_folder(base: str, playlist_path: str) -> str:
    """The URL folder of the media the live playlist lists now (its epoch's folder)."""
    text = httpx.get(base + playlist_path, timeout=5).text
    m = re.findall(r'#EXT-X-MAP:URI="(?:([^"/]+)/)?init\.mp4"', text)
    assert m, text
    folder = playlist_path.rsplit("/", 1)[0]
    return f"{folder}/{m[-1]}" if m[-1] else folder


def counters(base: str, name: str) -> dict[tuple[str, ...], float]:
    """A Prometheus counter's samples, keyed by label values in order."""
    text = httpx.get(base + "/metrics", timeout=5).text
    out: dict[tuple[str, ...], float] = {}
    for m in re.finditer(rf"^{name}(?:{{(.*?)}})? (\S+)$", text, re.M):
        labels = tuple(re.findall(r'="(.*?)"', m[1] or ""))
        out[labels] = float(m[2])
    return out


def origin_requests(base: str) -> dict[str, float]:
    """Origin requests by kind, all statuses summed."""
    out: dict[str, float] = {}
    for (kind, _status), n in counters(base, "townsquare_origin_requests_total").items():
        out[kind] = out.get(kind, 0) + n
    return out


def gauge(base: str, name: str) -> float:
    return counters(base, name)[()]
