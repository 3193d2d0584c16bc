"""SDP offers: `check_offer` in-process and WHIP end to end (FastAPI app, aiortc answering).

Offers start from a real aiortc publisher's offer and are mutated line by line (a line
dropped, cut, doubled, replaced by junk, a value replaced) and byte by byte. The pure check may
only raise ingest's own errors; WHIP may only answer 201 (aiortc still made sense of it), 400,
406 or 413, leave no session behind, and still answer a good offer afterwards. (Moved here, with
Hypothesis, from tests/ingest/test_fuzz.py.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from hypothesis import given
from hypothesis import strategies as st

from ingest.api import ApiLimits, PublicUrls, build_app
from ingest.errors import IngestError
from ingest.metrics import IngestMetrics
from ingest.rooms import Rooms
from ingest.whip import WhipEndpoint, allow_loopback_candidates, check_offer
from tests.fuzz import seeds
from tests.fuzz.bounds import REPLAY, bounded, rss_growth_over
from tests.fuzz.loop_thread import LoopThread
from tests.fuzz.mutate import mutated
from tests.fuzz.profiles import count, fuzz_settings
from tests.ingest.twins import RecordingPackager, ToneTrack, whip_offer

BATCH = 20
RSS_GROWTH_BOUND = 32 << 20
JUNK = ("a=rtpmap:111 opus/abc", "a=fingerprint:sha-256", "m=audio x UDP/TLS/RTP/SAVPF",
        "a=candidate:1 1 udp nope", "c=IN IP4", "a=ssrc:-1 cname:x", "a=rtcp-fb:",
        "a=setup:bogus", "a=mid:" + "x" * 5000, "m=audio 9 UDP/TLS/RTP/SAVPF 0 " + "1 " * 500,
        "a=group:BUNDLE 9 9 9", "a=extmap:99999 urn:x", "\x00\xff", "a=fmtp:111 =;=;=",
        "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=rtpmap:96 VP8/90000", "a=sendrecv", "a=inactive",
        "a=rtcp-mux", "a=ice-options:trickle", "t=0 0", "v=0", "a=msid-semantic:WMS *")
# The rate limit is its own subject (tests/ingest); here every offer must reach the parser.
UNTHROTTLED = ApiLimits(rate_per_second=1e9, burst=10**9)
VALUES = ("", "-1", "0", "999999999999", "x y z", "%s" * 10, "\t", "a" * 300, "1/2/3", ":::")


@st.composite
def line_mutant(draw: st.DrawFn) -> bytes:
    lines = seeds.aiortc_offer().split("\r\n")
    for _ in range(draw(st.integers(1, 4))):
        j = draw(st.integers(1, len(lines) - 1))
        op = draw(st.sampled_from(("drop", "junk", "cut", "value", "double")))
        if op == "drop":
            del lines[j]
        elif op == "junk":
            lines.insert(j, draw(st.sampled_from(JUNK)))
        elif op == "cut":
            lines[j] = lines[j][: draw(st.integers(0, len(lines[j])))]
        elif op == "value":
            key = lines[j].partition(":")[0]
            lines[j] = key + ":" + draw(st.sampled_from(VALUES))
        else:
            lines.insert(j, lines[j])
    return "\r\n".join(lines).encode("utf-8", "surrogatepass")


def offers() -> st.SearchStrategy[bytes]:
    real = seeds.aiortc_offer().encode()
    return st.one_of(line_mutant(), line_mutant(), mutated([real], max_edits=6),
                     st.binary(max_size=2000), st.just(real))


@fuzz_settings(ci=300)
@given(offers())
def test_offer_check_accepts_or_refuses_in_its_own_words(body: bytes) -> None:
    count("sdp.check")
    with bounded(len(body), factor=64):
        try:
            check_offer(body)
        except IngestError:
            pass


@dataclass
class Whip:
    rooms: Rooms
    whip: WhipEndpoint
    http: httpx.AsyncClient
    headers: dict[str, str]


async def _start() -> Whip:
    allow_loopback_candidates(True)
    packager = RecordingPackager()
    metrics = IngestMetrics()
    rooms = Rooms(packager, None, metrics)
    whip = WhipEndpoint(rooms, metrics, connect_timeout=5)
    app = build_app(rooms, whip, metrics, "t" * 20,
                    PublicUrls("http://c", "rtmp://r", "http://e", "http://o"),
                    limits=UNTHROTTLED)
    _, key = await rooms.create("sdp")
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c")
    return Whip(rooms, whip, http, {"Content-Type": "application/sdp",
                                    "Authorization": f"Bearer {key}"})


async def _post(w: Whip, body: bytes) -> int:
    r = await w.http.post("/whip/sdp", content=body, headers=w.headers)
    if r.status_code == 201:
        await w.http.delete(r.headers["location"], headers=w.headers)
    assert r.status_code in (201, 400, 406, 413), (r.status_code, r.text, body[:300])
    return r.status_code


async def _post_all(w: Whip, bodies: list[bytes]) -> list[int]:
    # One after another, as a publisher retrying would: concurrent offers from one address
    # meet the per-address session limit, which is not what this target is about.
    return [await _post(w, b) for b in bodies]


async def _good_offer_answered(w: Whip) -> int:
    pc, good = await whip_offer(ToneTrack(700))
    try:
        r = await w.http.post("/whip/sdp", content=good, headers=w.headers)
        return r.status_code
    finally:
        await pc.close()


async def _stop(w: Whip) -> None:
    await w.http.aclose()
    await w.whip.close()
    await w.rooms.close()


def test_whip_answers_mutated_offers_cleanly_and_still_a_good_one(loop_thread: LoopThread) -> None:
    seeds.aiortc_offer()  # made before the loop thread is busy
    w = loop_thread.run(_start())
    statuses: dict[int, int] = {}
    last: deque[bytes] = deque(maxlen=REPLAY)

    def run(bodies: Sequence[bytes]) -> None:
        for status in loop_thread.run(_post_all(w, list(bodies)), timeout=120):
            statuses[status] = statuses.get(status, 0) + 1

    @fuzz_settings(ci=15, batch=BATCH)
    @given(st.lists(offers(), min_size=BATCH, max_size=BATCH))
    def throw(bodies: list[bytes]) -> None:
        count("sdp.whip", len(bodies))
        run(bodies)
        last.extend(bodies)

    try:
        throw()
        growth = rss_growth_over(run, list(last), BATCH)
        assert growth < RSS_GROWTH_BOUND, f"RSS grew {growth >> 20} MiB over a replay"
        assert statuses.get(400, 0) > 0 and statuses.get(201, 0) > 0, statuses
        assert not w.whip.sessions
        assert loop_thread.run(_good_offer_answered(w)) == 201
    finally:
        loop_thread.run(_stop(w))
