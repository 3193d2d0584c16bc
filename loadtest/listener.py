"""One simulated LL-HLS listener: what hls.js asks for in low-latency mode, nothing more.

It loads the multivariant playlist, takes the rendition its number points at, loads that
playlist once, then for every part: the preload-hinted part and, at the same time, the
blocking reload that will list it (`_HLS_msn`/`_HLS_part`, `_HLS_skip=YES` for a delta
update), each on its own keep-alive connection as a browser would. A part's delay is read
when a playlist lists it: arrival minus the capture time of its last sample.
"""

from __future__ import annotations

import asyncio
import posixpath
import random
import time

from loadtest.http import Connection, HttpError
from loadtest.playlist import LiveView, NotAPlaylist, read_shared
from loadtest.stats import Tally

MAX_PENDING = 16  # parts received and not yet listed: older ones are forgotten


class Listener:
    def __init__(self, number: int, host: str, port: int, master: str, tally: Tally,
                 timeout: float = 15.0) -> None:
        self.number = number
        self.master = master
        self.tally = tally
        self.playlists = Connection(host, port, timeout)
        self.parts = Connection(host, port, timeout)
        self.arrivals: dict[str, float] = {}
        self.got_first = False

    async def run(self, stop: asyncio.Event) -> None:
        started = time.time()
        try:
            while not stop.is_set():
                try:
                    await self._listen(stop, started)
                    return  # the broadcast ended
                except (HttpError, NotAPlaylist) as exc:
                    kind = exc.kind if isinstance(exc, HttpError) else "bad_playlist"
                    self.tally.errors[kind] += 1
                # A player retries after a moment, and listeners do not all retry at once.
                await _sleep_or_stop(stop, 0.5 + random.random())
        finally:
            self.playlists.close()
            self.parts.close()

    async def _listen(self, stop: asyncio.Event, started: float) -> None:
        master = await self._get(self.playlists, self.master, "master")
        variants = [line for line in master.decode(errors="replace").splitlines()
                    if line and not line.startswith("#")]
        if not variants:
            raise NotAPlaylist("the multivariant playlist lists no rendition")
        media = posixpath.join(posixpath.dirname(self.master),
                               variants[self.number % len(variants)])
        base = posixpath.dirname(media)
        view = read_shared(await self._get(self.playlists, media, "playlist"))
        while not stop.is_set():
            self._delays(view)
            if view.ended:
                return
            if view.hint is None:
                await _sleep_or_stop(stop, view.part_target)
                view = read_shared(await self._get(self.playlists, media, "playlist"))
                continue
            part = asyncio.create_task(self._part(posixpath.join(base, view.hint), view.hint,
                                                  started))
            target = (f"{media}?_HLS_msn={view.hint_msn}&_HLS_part={view.hint_part}"
                      "&_HLS_skip=YES")
            try:
                view = read_shared(await self._get(self.playlists, target, "blocking"))
            except BaseException:
                part.cancel()
                part.add_done_callback(_retrieve)
                raise
            await part  # its error, if it had one, is this listener's error too

    async def _part(self, path: str, uri: str, started: float) -> None:
        await self._get(self.parts, path, "part")
        now = time.time()
        self.arrivals[uri] = now
        self.tally.parts += 1
        if not self.got_first:
            self.got_first = True
            self.tally.first_part.add(now - started)
        if len(self.arrivals) > MAX_PENDING:
            del self.arrivals[next(iter(self.arrivals))]

    def _delays(self, view: LiveView) -> None:
        for uri in [u for u in self.arrivals if u in view.parts]:
            start, duration = view.parts[uri]
            self.tally.part_delay.add(self.arrivals.pop(uri) - (start + duration))

    async def _get(self, conn: Connection, target: str, kind: str) -> bytes:
        self.tally.requests[kind] += 1
        response = await conn.get(target)
        self.tally.bytes += len(response.body)
        if response.status != 200:
            raise HttpError(f"http_{response.status}")
        return bytes(response.body)


def _retrieve(task: asyncio.Task[None]) -> None:
    """Read a dropped task's outcome so that asyncio does not report it as lost."""
    if not task.cancelled():
        task.exception()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
