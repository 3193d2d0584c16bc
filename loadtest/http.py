"""One keep-alive HTTP/1.1 client connection on a raw asyncio protocol.

Written by hand rather than with httpx or aiohttp: a listener costs about ten requests a
second, so 10 000 of them from one machine is about 100 000 requests a second, and every
microsecond a request costs the client is a tenth of a core. A protocol object that hands
bytes to httptools and resolves one future per response keeps a whole simulated listener at
about 41 µs of client CPU a request (measured: the offload benchmark's load generator, 1 000
listeners, playlist reading included), so 10 000 listeners take about four cores; a general
client spends several times as much on headers, pools and streams.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

import httptools

MAX_BODY = 4 * 1024 * 1024  # a playlist or a part is far smaller; more is a broken server


class HttpError(Exception):
    """The connection failed or the answer was not HTTP; `kind` names it for the tallies."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass(slots=True)
class Response:
    status: int = 0
    body: bytearray = field(default_factory=bytearray)
    age: int | None = None
    keep_alive: bool = True


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response = Response()
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self._header = b""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpError("bad_response", str(exc)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(HttpError("closed", str(exc or "")))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"age":
            try:
                self.response.age = int(value)
            except ValueError:
                self.response.age = -1

    def on_headers_complete(self) -> None:
        self.response.status = self.parser.get_status_code()
        self.response.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.response.body += body
        if len(self.response.body) > MAX_BODY:
            self._fail(HttpError("too_large"))
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        response, self.response = self.response, Response()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(response)

    def _fail(self, exc: HttpError) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)


def _expire(waiter: asyncio.Future[Response]) -> None:
    if not waiter.done():
        waiter.set_exception(HttpError("timeout"))


class Connection:
    """Requests one at a time over a connection that is reopened whenever it closes."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._proto: _Protocol | None = None
        self._host_header = f"Host: {host}:{port}\r\n".encode()

    async def get(self, target: str) -> Response:
        proto = self._proto
        if proto is None or proto.closed:
            proto = await self._connect()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Response] = loop.create_future()
        proto.waiter = waiter
        assert proto.transport is not None
        proto.transport.write(b"GET " + target.encode() + b" HTTP/1.1\r\n" + self._host_header
                              + b"\r\n")
        # A timer that fails the waiter, rather than `asyncio.wait_for`, which (Python 3.11)
        # adds a future of its own and a callback's turn of the loop to every response.
        timer = loop.call_later(self.timeout, _expire, waiter)
        try:
            response = await waiter
        except BaseException:  # failed, timed out or cancelled: a late answer must not be
            self.close()       # taken for the next request's
            raise
        finally:
            timer.cancel()
        if not response.keep_alive:
            self.close()
        return response

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(_Protocol, self.host, self.port), self.timeout)
        except (OSError, TimeoutError) as exc:
            raise HttpError("connect", str(exc)) from None
        self._proto = proto
        return proto

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
