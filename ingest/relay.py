"""The relay: a speaker who reached a node that does not publish their room is heard anyway.

The node the speaker reached decodes their audio as usual and streams it, one hop, to the
node that holds the room's lease: an HTTP POST to the owner's control API whose body is the
speaker's program-rate PCM (16-bit little-endian stereo, interleaved), authenticated with the
admin token the nodes share. A GET on the same path first asks whether the owner takes it:
the answer to the POST itself comes only once its body ends. The owner feeds it to a speaker
of its mixer, whose jitter buffer absorbs the link's jitter. Both ends are bounded: the
sender keeps at most `MAX_QUEUED` blocks and drops the oldest when the link is slower than
real time; the receiver's jitter buffer has its own bound.

Raw PCM over HTTP was chosen over re-sending the speaker's own codec: the owner then needs
no decoder per protocol, and at 192 kB/s per speaker inside a VPC the cost is nothing.

The relay's URL says what the owner needs to know of the speaker (`link_url`): the name
listeners read, whether they are muted, and which node and speaker the relay comes from. The
owner tells that node when it mutes or renames the speaker (`tell_source`, a POST to
`RELAYED_PATH` on the relaying node's control API). So the node that holds the speaker's
connection always knows their state, and carries it with them when the room moves: into its
own mix, or in the URL of its relay to the next owner.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

import httpx
import numpy as np
from prometheus_client import Counter

from serving.tasks import cancel_and_wait

log = logging.getLogger("townsquare.ingest.relay")

RELAY_BLOCKS = Counter("townsquare_ingest_relay_blocks_total",
                       "Audio blocks relayed to a room's owner, by outcome", ["outcome"])
RELAYS_GONE_SILENT = Counter("townsquare_ingest_relays_gone_silent_total",
                             "Relays into a room published here ended because nothing came "
                             "for RELAY_IDLE_SECONDS (their node is gone or cut off)")
RELAY_PATH = "/internal/relay/"  # on the owner's control API, followed by the room
# On the relaying node's control API, followed by the room and the speaker's id there.
RELAYED_PATH = "/internal/relayed/"
MAX_QUEUED = 100  # blocks (each what the decoder produced, ~20-40 ms): about 2-4 s
FRAME_BYTES = 4  # one stereo sample in s16le
# A relay's body brings audio every 20-40 ms while its speaker is connected. Nothing for this
# long: the relaying node is gone or cut off (a partition sends no FIN) and the relayed
# speaker leaves the room. Longer than the speakers' own deadlines (RTMP 10 s, WHIP 5 s), so a
# speaker whose connection stalls is let go by their node first, which ends the relay cleanly.
RELAY_IDLE_SECONDS = 15.0
# The owner's answer to "would you take a relay now?" (it waits up to 5 s for a room it is
# putting on air).
READY_TIMEOUT = 10.0
# The relaying node's answer to "this speaker of yours changed here" (a dict write there).
TELL_TIMEOUT = 5.0


def to_wire(pcm: np.ndarray) -> bytes:
    """Planar float (2, n) in [-1, 1] to interleaved s16le."""
    clipped = np.clip(pcm, -1.0, 1.0)
    data: bytes = (clipped.T * 32767.0).astype("<i2").tobytes()
    return data


def from_wire(data: bytes) -> np.ndarray:
    """Interleaved s16le to planar float32 (2, n); `data` holds whole frames."""
    samples = np.frombuffer(data, dtype="<i2").reshape(-1, 2)
    return np.ascontiguousarray(samples.T.astype(np.float32) / 32767.0)


class RelayLink:
    """The sending end: `push` returns at once; a task streams the queue to the owner."""

    def __init__(self, url: str, token: str, on_closed: Callable[[], None]) -> None:
        self.url = url
        self._token = token
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(MAX_QUEUED)
        self._on_closed = on_closed
        self._task = asyncio.get_running_loop().create_task(self._run(), name="relay")

    def push(self, pcm: np.ndarray) -> None:
        data = to_wire(pcm)
        if self._queue.full():
            self._queue.get_nowait()  # the link is behind: the oldest audio is the least use
            RELAY_BLOCKS.labels("dropped").inc()
        self._queue.put_nowait(data)

    async def _body(self) -> AsyncIterator[bytes]:
        while True:
            data = await self._queue.get()
            if data is None:
                return
            RELAY_BLOCKS.labels("sent").inc()
            yield data

    async def _run(self) -> None:
        auth = {"Authorization": f"Bearer {self._token}"}
        streaming = False
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as client:
                # Ask first: the owner's answer to the relay itself comes only once the body
                # ends, which for a speaker still talking is never.
                ready = await client.get(self.url, headers=auth, timeout=READY_TIMEOUT)
                # 405: an owner from before the check (a rolling deploy): it takes the relay.
                if ready.status_code >= 300 and ready.status_code != 405:
                    log.warning("relay to %s refused: %s %s", self.url, ready.status_code,
                                ready.text[:200])
                    RELAY_BLOCKS.labels("refused").inc(self._queue.qsize())
                    return
                streaming = True
                r = await client.post(self.url, content=self._body(),
                                      headers={**auth,
                                               "Content-Type": "audio/L16;rate=48000;channels=2"})
                if r.status_code >= 300:
                    log.warning("relay to %s refused: %s %s", self.url, r.status_code,
                                r.text[:200])
        except httpx.HTTPError as exc:
            if streaming and isinstance(exc, httpx.TransportError):
                # The owner closed the connection while the speaker was talking: it let them
                # go (a hand-over, a removal) or went away. What follows is logged by the
                # node that carries the speaker on (or disconnects them).
                log.info("relay to %s ended by the owner: %r", self.url, exc)
            else:
                log.warning("relay to %s ended: %r", self.url, exc)
        finally:
            self._on_closed()

    async def close(self) -> None:
        if not self._task.done():
            if self._queue.full():
                self._queue.get_nowait()
            self._queue.put_nowait(None)  # the end of the body
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 2.0)
            except TimeoutError:
                await cancel_and_wait(self._task)


def link_url(relay_url: str, name: str, node: str, speaker: str, muted: bool) -> str:
    """The URL a relay of `speaker` (their id on `node`, the relaying node) is posted to."""
    query = {"name": name, "node": node, "speaker": speaker, "muted": "1" if muted else "0"}
    return f"{relay_url}?{urlencode(query)}"


async def tell_source(control_url: str, room: str, speaker: str, token: str,
                      change: dict[str, Any]) -> str:
    """Tell the node a speaker is relayed from (its control API at `control_url`; `speaker`,
    their id there) what changed at the owner: `muted`, `name`. Returns "ok" or why not."""
    url = f"{control_url.rstrip('/')}{RELAYED_PATH}{room}/{speaker}"
    try:
        async with httpx.AsyncClient(timeout=TELL_TIMEOUT, trust_env=False) as client:
            r = await client.post(url, json=change, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok" if r.status_code == 204 else f"answered {r.status_code}: {r.text[:200]}"


async def still_taken(url: str, token: str) -> bool:
    """Whether the owner at `url` (a relay path) takes relays into the room now. Asked after
    a relay it took has ended: yes means the owner let the speaker go on purpose (removed
    them); no, that the room has stopped there (or the owner is gone)."""
    try:
        async with httpx.AsyncClient(timeout=READY_TIMEOUT) as client:
            r = await client.get(url, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError:
        return False
    return r.status_code < 300


async def receive(chunks: AsyncIterator[bytes], push: Callable[[np.ndarray], None],
                  idle: float = RELAY_IDLE_SECONDS) -> int:
    """The receiving end: feed relayed PCM to `push` as whole frames arrive; returns the
    number of samples received, once the body ends or nothing has come for `idle` seconds."""
    rest = b""
    total = 0
    stream = aiter(chunks)
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await anext(stream)
        except StopAsyncIteration:
            break
        except TimeoutError:
            RELAYS_GONE_SILENT.inc()
            log.warning("relay silent for %g s: its node is gone or cut off; ended", idle)
            break
        data = rest + chunk
        whole = len(data) - len(data) % FRAME_BYTES
        rest = data[whole:]
        if whole:
            push(from_wire(data[:whole]))
            total += whole // FRAME_BYTES
    return total
