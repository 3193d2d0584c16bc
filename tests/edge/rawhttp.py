"""A minimal HTTP/1.1 client over raw sockets: many connections, pipelining, exact bytes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httptools


@dataclass
class Reply:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class _Collector:
    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.current = Reply()
        self.parser = httptools.HttpResponseParser(self)
        self.head = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        self.replies.append(self.current)
        self.current = Reply()


def request_bytes(target: str, method: str = "GET", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: edge"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Connection:
    """One keep-alive client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.collector = _Collector()

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read(self, count: int = 1, timeout: float = 15.0) -> list[Reply]:
        """Read `count` complete responses (GET responses only: HEAD has no body to frame)."""
        c = self.collector
        async with asyncio.timeout(timeout):
            while len(c.replies) < count:
                data = await self.reader.read(65536)
                if not data:
                    break
                c.parser.feed_data(data)
        out, c.replies = c.replies[:count], c.replies[count:]
        return out

    async def get(self, target: str, headers: dict[str, str] | None = None,
                  timeout: float = 15.0) -> Reply:
        self.send(request_bytes(target, headers=headers))
        replies = await self.read(1, timeout)
        if not replies:
            raise ConnectionError("connection closed before a response")
        return replies[0]

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


async def get(port: int, target: str, headers: dict[str, str] | None = None,
              timeout: float = 15.0) -> Reply:
    conn = await Connection.open(port)
    try:
        return await conn.get(target, headers, timeout)
    finally:
        await conn.close()
