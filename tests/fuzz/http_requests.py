"""Raw HTTP/1.1 requests for the origin and the edge, and a client that reads what comes back.

Requests are built from real LL-HLS targets (paths named by `hls.names`, real directives) with
methods, versions and headers players and attackers send, then optionally mutated as bytes and
pipelined. `exchange` sends one connection's bytes and parses every response with httptools:
a response that does not parse is a failure as much as a 500 is.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field

import httptools
from hypothesis import strategies as st

from tests.fuzz.hls_text import paths, queries
from tests.fuzz.mutate import mutated

METHODS = ("GET", "GET", "GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "CONNECT", "get",
           "BREW", "")
VERSIONS = ("HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/9.9", "HTTP/1.1 x", "")
OTHER_TARGETS = ("/healthz", "/metrics", "/listen/fuzzroom", "/api/listeners/fuzzroom",
                 "/static/listen.js", "/", "*", "http://edge/live/fuzzroom/master.m3u8",
                 "/live", "/live/", "/live//x", "/live/fuzzroom/../../etc/passwd",
                 "/live/%2e%2e/x", "/" + "a" * 9000)
HEADERS = ("Host: edge", "Accept-Encoding: gzip", "Accept-Encoding: br, gzip;q=0",
           "User-Agent: hls.js", "Connection: close", "Connection: keep-alive",
           "Content-Length: 5\r\n\r\nhello", "Content-Length: -1", "Content-Length: 99999999999",
           "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0", "Transfer-Encoding: chunked",
           "Upgrade: websocket\r\nConnection: Upgrade", "Expect: 100-continue", "X: " + "y" * 9000,
           "Range: bytes=0-10", "If-None-Match: *", ": empty name", "Bad Header", "\x00: nul")


@st.composite
def request(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 4)):
        target = "/live/" + draw(paths())
        if draw(st.booleans()):
            target += "?" + draw(queries())
    else:
        target = draw(st.sampled_from(OTHER_TARGETS))
    line = f"{draw(st.sampled_from(METHODS))} {target} {draw(st.sampled_from(VERSIONS))}"
    headers = draw(st.lists(st.sampled_from(HEADERS), max_size=4))
    if draw(st.integers(0, 3)):
        headers.insert(0, "Host: edge")
    text = "\r\n".join([line, *headers]) + "\r\n\r\n"
    return text.encode("utf-8", "surrogatepass")


@st.composite
def connection_bytes(draw: st.DrawFn) -> bytes:
    """One connection's worth: one to three requests, sometimes mutated as bytes. A HEAD
    request goes alone: its answer has a length and no body, which only the client that
    asked can frame (see `exchange`)."""
    reqs = draw(st.lists(request(), min_size=1, max_size=3))
    if any(r.startswith(b"HEAD ") for r in reqs):
        reqs = [next(r for r in reqs if r.startswith(b"HEAD "))]
    data = b"".join(reqs)
    if draw(st.integers(0, 3)) == 0:
        data = draw(mutated([data], max_edits=4))
    return data


@dataclass
class Exchange:
    statuses: list[int] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    # Whether each response said when to ask again (`Retry-After`).
    retry_after: list[bool] = field(default_factory=list)
    malformed: str | None = None


class _Responses:
    def __init__(self, out: Exchange) -> None:
        self.out = out
        self.body = b""
        self.retry = False
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.body = b""
        self.retry = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self.retry = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.out.statuses.append(self.parser.get_status_code())
        self.out.bodies.append(self.body[:200])
        self.out.retry_after.append(self.retry)


async def exchange(port: int, data: bytes, deadline: float, quiet: float = 0.3) -> Exchange:
    """Send `data` on a new connection; read responses until the server closes, `quiet`
    seconds pass without bytes after a response, or `deadline` (then it is left held)."""
    out = Exchange()
    responses = _Responses(out)
    if data.startswith(b"HEAD "):
        return await _head(port, data, deadline, out)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    try:
        writer.write(data)
        while (left := end - loop.time()) > 0:
            wait = min(left, quiet) if out.statuses else left
            try:
                chunk = await asyncio.wait_for(reader.read(65_536), wait)
            except TimeoutError:
                break
            if not chunk:
                break
            try:
                responses.parser.feed_data(chunk)
            except httptools.HttpParserUpgrade:
                break
            except httptools.HttpParserError as exc:
                out.malformed = f"{exc}: {chunk[:200]!r}"
                break
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return out


async def _head(port: int, data: bytes, deadline: float, out: Exchange) -> Exchange:
    """A lone HEAD request: read until close or deadline, take the status line's code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    try:
        writer.write(data)
        async with asyncio.timeout(deadline):
            while b"\r\n\r\n" not in received and (chunk := await reader.read(65_536)):
                received += chunk
    except (TimeoutError, ConnectionError, OSError):
        pass
    finally:
        writer.close()
    if received:
        m = re.match(rb"HTTP/1\.[01] (\d{3}) ", received)
        if m is None:
            out.malformed = f"no status line: {received[:200]!r}"
        else:
            out.statuses.append(int(m[1]))
            out.bodies.append(b"")
            head = received.split(b"\r\n\r\n", 1)[0].lower()
            out.retry_after.append(b"\r\nretry-after:" in head)
    return out
