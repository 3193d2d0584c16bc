"""The origin's routes and the edge's request parsing over real sockets, against raw requests
built from real LL-HLS targets and mutated (see `http_requests`).

Every answer must be a well-formed HTTP response whose status is 2xx/3xx/4xx, the 503 of a
blocking request the live room could not satisfy in time (LLHLS.md), or a 503 that says when
to ask again (`Retry-After`: the edge shedding load, or its upstream slow to answer under the
test's hundred connections at once on a busy machine). Afterwards the servers
must still answer a real player's requests, and the process's memory must have stayed bounded.
An answer is awaited 1 s: a blocking request the origin holds for its part (up to 3 target
durations) is left held and its connection closed, which the servers must also survive; what
a held request is finally answered is pinned by tests/packager and tests/edge.

A hundred connections make one example: more overruns what Hypothesis draws for one example.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import hls_stage, seeds
from tests.fuzz.bounds import REPLAY, rss_growth_over
from tests.fuzz.http_requests import Exchange, connection_bytes, exchange
from tests.fuzz.loop_thread import LoopThread
from tests.fuzz.profiles import count, fuzz_settings

BATCH = 100  # connections at once: one Hypothesis example
ANSWER_DEADLINE = 1.0
RSS_GROWTH_BOUND = 32 << 20
HELD_503 = b"in time"


@pytest.fixture(scope="module")
def stage(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[hls_stage.HlsStage]:
    # uvicorn logs every malformed request; kept by pytest's log capture, ten thousand of
    # them would be the largest thing in memory and hide what the servers hold.
    uvicorn_log = logging.getLogger("uvicorn.error")
    level = uvicorn_log.level
    uvicorn_log.setLevel(logging.ERROR)
    s = loop_thread.run(hls_stage.start(tmp_path_factory.mktemp("store")))
    try:
        yield s
    finally:
        loop_thread.run(s.stop())
        uvicorn_log.setLevel(level)


async def _batch(port: int, conns: list[bytes]) -> list[Exchange]:
    return list(await asyncio.gather(*(exchange(port, c, ANSWER_DEADLINE) for c in conns)))


def _check(conn: bytes, ex: Exchange) -> None:
    assert ex.malformed is None, (conn[:300], ex.malformed)
    for status, body, retry in zip(ex.statuses, ex.bodies, ex.retry_after, strict=True):
        held = status == 503 and HELD_503 in body
        shed = status == 503 and retry
        assert status < 500 or held or shed, (conn[:300], status, body)


def _fuzz(loop_thread: LoopThread, port: int, target: str) -> tuple[Counter[int], int]:
    """Throw the batches; the status counts, and the RSS growth over a replay of the last
    connections (see bounds.rss_growth_over)."""
    statuses: Counter[int] = Counter()
    last: deque[bytes] = deque(maxlen=REPLAY)

    def run(conns: Sequence[bytes]) -> None:
        for conn, ex in zip(conns, loop_thread.run(_batch(port, list(conns)), 60), strict=True):
            _check(conn, ex)
            statuses.update(ex.statuses)

    @fuzz_settings(ci=3, batch=BATCH)
    @given(st.lists(connection_bytes(), min_size=BATCH, max_size=BATCH))
    def throw(conns: list[bytes]) -> None:
        count(target, len(conns))
        run(conns)
        last.extend(conns)

    throw()
    return statuses, rss_growth_over(run, list(last), BATCH)


async def _player_requests(port: int) -> list[int]:
    rend = f"/live/{seeds.ROOM}/{seeds.RENDITIONS[0]}"
    out = []
    for target in (f"/live/{seeds.ROOM}/master.m3u8", f"{rend}/live.m3u8",
                   f"{rend}/live.m3u8?_HLS_msn=3&_HLS_part=2",
                   f"{rend}/{seeds.EPOCH}/p3.1.m4s"):
        ex = await exchange(port, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 10)
        out += ex.statuses
    return out


def _after(loop_thread: LoopThread, port: int, statuses: Counter[int], growth: int) -> None:
    assert statuses[200] > 0 and statuses[400] > 0 and statuses[404] > 0, statuses
    assert loop_thread.run(_player_requests(port)) == [200, 200, 200, 200]
    assert growth < RSS_GROWTH_BOUND, f"RSS grew {growth >> 20} MiB over a replay"


def test_origin_answers_raw_requests_cleanly(loop_thread: LoopThread,
                                             stage: hls_stage.HlsStage) -> None:
    _after(loop_thread, stage.origin_port, *_fuzz(loop_thread, stage.origin_port,
                                                  "origin.routes"))


def test_edge_answers_raw_requests_cleanly(loop_thread: LoopThread,
                                           stage: hls_stage.HlsStage) -> None:
    _after(loop_thread, stage.edge_port, *_fuzz(loop_thread, stage.edge_port, "edge.protocol"))
