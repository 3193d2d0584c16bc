"""The HTTP servers beside the other servers of a process: a tick a second, an exit at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

import serving.http
from serving.http import QuietServer, http_server, serve_http
from tests.support.procs import free_port


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _started() -> tuple[QuietServer, asyncio.Task[None], str]:
    port = free_port()
    server = http_server(_app, "127.0.0.1", port)
    started = asyncio.Event()
    task = asyncio.create_task(serve_http(server, started))
    await asyncio.wait_for(started.wait(), 10)
    return server, task, f"http://127.0.0.1:{port}/"


async def test_the_server_ticks_once_a_second_and_its_date_header_keeps_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = 0
    on_tick = QuietServer.on_tick

    async def counted(self: QuietServer, counter: int) -> bool:
        nonlocal ticks
        ticks += 1
        return await on_tick(self, counter)

    monkeypatch.setattr(QuietServer, "on_tick", counted)
    server, task, url = await _started()
    try:
        async with httpx.AsyncClient() as client:
            first = (await client.get(url)).headers["date"]
            before = ticks
            await asyncio.sleep(2.5)
            during = ticks - before
            second = (await client.get(url)).headers["date"]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
    # uvicorn's own loop ticks ten times a second: 25 here.
    assert 1 <= during <= 4
    assert first != second  # the header is a second's resolution, and it moved on


async def test_a_server_told_to_exit_stops_without_waiting_for_its_next_tick(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving.http, "TICK_SECONDS", 60.0)
    server, task, url = await _started()
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).status_code == 200
    asked = time.monotonic()
    server.should_exit = True
    await asyncio.wait_for(task, 30)
    assert time.monotonic() - asked < 10  # the next tick was a minute away
