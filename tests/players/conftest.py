"""The stack every player test plays from: a demo room on a real origin behind a real edge,
one per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.edge.conftest import wait_live
from tests.support.procs import free_port, running

ROOM = "playersroom"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh demo room on a real origin, behind a real edge; yields the edge's URL."""
    d = tmp_path_factory.mktemp("players")
    origin_port, edge_port = free_port(), free_port()
    origin = f"http://127.0.0.1:{origin_port}"
    with running(["origin", "--demo", ROOM, "--port", str(origin_port), "--data",
                  str(d / "data")], d / "origin.log", f"{origin}/healthz"):
        wait_live(origin, ROOM)
        with running(["edge", "--upstream", origin, "--port", str(edge_port)], d / "edge.log",
                     f"http://127.0.0.1:{edge_port}/healthz"):
            yield f"http://127.0.0.1:{edge_port}"
