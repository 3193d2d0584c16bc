"""An HTTP relay for edge drills: one upstream per room, each room's traffic counted, and any
room's requests stalled on demand (held unanswered, as an origin whose room hangs).

    with RoomProxy({"a": origin_a, "b": origin_b}) as proxy:   # edge --upstream proxy.url
        proxy.stall("b")    # requests for /live/b/... are held from now on
        proxy.heal("b")     # held requests are relayed, new ones too
        proxy.counts["a"]   # requests relayed (or held) per room

GET only, keep-alive, Content-Length bodies: what the edge's upstream client sends. It runs
its own event loop in a thread, so a synchronous test can drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from types import TracebackType
from typing import Self

import httpx

from tests.support.procs import free_port

KEPT = ("content-type", "cache-control", "age", "retry-after")


class RoomProxy:
    def __init__(self, routes: dict[str, str]) -> None:
        self.routes = routes
        self.port = free_port()
        self.counts: Counter[str] = Counter()
        self._stalled: set[str] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="roomproxy")
        self._server: asyncio.Server | None = None
        self._client: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stall(self, room: str) -> None:
        self._stalled.add(room)

    def heal(self, room: str) -> None:
        self._stalled.discard(room)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _start(self) -> None:
        self._client = httpx.AsyncClient(timeout=30, trust_env=False)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._client is not None
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
                parts = target.split("/")
                room = parts[2] if len(parts) > 2 and parts[1] == "live" else ""
                self.counts[room] += 1
                while room in self._stalled:
                    await asyncio.sleep(0.05)
                base = self.routes.get(room)
                if base is None:
                    status, headers, body = 404, {"content-type": "text/plain"}, b"no route\n"
                else:
                    r = await self._client.get(base + target)
                    status, headers, body = r.status_code, dict(r.headers), r.content
                lines = [f"HTTP/1.1 {status} X"]
                lines += [f"{k}: {headers[k]}" for k in KEPT if k in headers]
                lines.append(f"Content-Length: {len(body)}")
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, httpx.HTTPError, IndexError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stalled.clear()

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            held = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in held:
                t.cancel()
            await asyncio.gather(*held, return_exceptions=True)
            if self._client is not None:
                await self._client.aclose()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
