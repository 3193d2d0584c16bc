"""Cached answers, kept as pre-built HTTP/1.1 response bytes.

A hit writes `Entry.response(...)`: the bytes are rebuilt at most once a second per entry (the
`Age` header is the only part that moves), so the hot path is a comparison and a socket write.
"""

from __future__ import annotations

import gzip
import re

from edge.targets import PLAYLIST_TARGETS
from hls.http import CORS_HEADERS, content_type_for_kind
from hls.http import max_age as cache_max_age

REASONS = {
    200: b"OK",
    204: b"No Content",
    304: b"Not Modified",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    410: b"Gone",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
CORS = "".join(f"{name}: {value}\r\n" for name, value in CORS_HEADERS).encode()
# Bookkeeping per entry beyond its bytes (objects, dict slot, key), counted against the bound.
ENTRY_OVERHEAD = 512
GZIP_MIN = 256
_MAX_AGE = re.compile(rb"(?:^|[,\s])(?:s-maxage|max-age)\s*=\s*(\d+)", re.I)


def status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Unknown"))


def max_age(cache_control: bytes | None) -> float | None:
    """The freshness lifetime a Cache-Control value grants (s-maxage wins), None if it names none."""
    if not cache_control:
        return None
    lowered = cache_control.lower()
    if b"no-store" in lowered or b"no-cache" in lowered or b"private" in lowered:
        return 0.0
    ages = [int(m) for m in _MAX_AGE.findall(cache_control)]
    return float(min(ages)) if ages else None


class Entry:
    """One cached answer: status, headers and body, ready to be written."""

    __slots__ = (
        "status", "kind", "body", "gz", "fields", "born", "expires", "size",
        "aged", "_age", "_full", "_gz_age", "_gz_full", "_variants",
    )

    def __init__(
        self, status: int, kind: str, body: bytes, fields: bytes, born: float, lifetime: float,
        aged: bool = True, gz: bytes | None = None,
    ) -> None:
        self.status = status
        self.kind = kind
        self.body = body
        # Header lines shared by every variant: everything except length, age and encoding.
        self.fields = fields
        self.born = born
        self.expires = born + lifetime
        self.gz = gz
        if kind in PLAYLIST_TARGETS and len(body) >= GZIP_MIN:
            if gz is None:
                self.gz = gzip.compress(body, 6, mtime=0)
            self.fields += b"Vary: Accept-Encoding\r\n"
        self.size = len(body) + len(fields) + len(self.gz or b"") + ENTRY_OVERHEAD
        self._age = -1
        self._full = b""
        self._gz_age = -1
        self._gz_full = b""
        # Answers made up by the edge itself carry no Age: they were never cached upstream.
        self.aged = aged
        self._variants: dict[int | None, Entry] | None = None

    def fresh(self, now: float) -> bool:
        return now < self.expires

    def head(self, age: int, gz: bool, close: bool) -> bytes:
        body = self.gz if gz and self.gz is not None else self.body
        return b"".join((
            status_line(self.status),
            self.fields,
            b"Content-Encoding: gzip\r\n" if body is self.gz else b"",
            b"Content-Length: %d\r\n" % len(body),
            b"Age: %d\r\n" % age if self.aged else b"",
            b"Connection: close\r\n\r\n" if close else b"\r\n",
        ))

    def response(self, now: float, gz: bool, head_only: bool, close: bool) -> bytes:
        """The full response bytes; the keep-alive GET variants are memoised per Age second."""
        age = int(now - self.born)
        if age < 0:
            age = 0
        gz = gz and self.gz is not None
        if head_only or close:
            head = self.head(age, gz, close)
            if head_only:
                return head
            return head + (self.gz if gz else self.body)  # type: ignore[operator]
        if gz:
            if age != self._gz_age:
                self._gz_full = self.head(age, True, False) + self.gz  # type: ignore[operator]
                self._gz_age = age
            return self._gz_full
        if age != self._age:
            self._full = self.head(age, False, False) + self.body
            self._age = age
        return self._full

    def relabelled(self, max_age: int | None) -> Entry:
        """This answer with another `Cache-Control: max-age` (a local answer), or with
        `no-cache` when `max_age` is None (a stale copy: no cache may keep it, and its Age,
        whatever it is, never exceeds a max-age it does not have)."""
        if self._variants is None:
            self._variants = {}
        variant = self._variants.get(max_age)
        if variant is None:
            fields = without_fields(self.fields, b"cache-control:", b"vary:")
            if max_age is None:
                fields += b"Cache-Control: no-cache\r\n"
            else:
                fields += b"Cache-Control: %s\r\n" % cache_max_age(max_age).encode()
            variant = Entry(self.status, self.kind, self.body, fields, self.born, max_age or 0,
                            gz=self.gz)
            self._variants[max_age] = variant
        return variant


def without_fields(fields: bytes, *names: bytes) -> bytes:
    """Header lines `fields` with those named (lower case, with their colon) left out."""
    return b"".join(line + b"\r\n" for line in fields.split(b"\r\n")
                    if line and not line.lower().startswith(names))


def build_fields(
    kind: str, content_type: bytes | None, cache_control: bytes, extra: list[tuple[bytes, bytes]],
) -> bytes:
    lines = [
        b"Content-Type: " + (content_type or content_type_for_kind(kind).encode()),
        b"Cache-Control: " + cache_control,
    ]
    lines.extend(name + b": " + value for name, value in extra)
    return b"\r\n".join(lines) + b"\r\n" + CORS


def local_response(
    status: int, body: bytes, content_type: bytes = b"text/plain; charset=utf-8",
    cache_control: bytes = b"no-store", extra: bytes = b"", close: bool = False,
    head_only: bool = False,
) -> bytes:
    """A response generated by the edge itself (errors, health, metrics, pages)."""
    return b"".join((
        status_line(status),
        b"Content-Type: ", content_type, b"\r\nCache-Control: ", cache_control, b"\r\n",
        CORS,
        extra,
        b"Content-Length: %d\r\n" % len(body),
        b"Connection: close\r\n\r\n" if close else b"\r\n",
        b"" if head_only else body,
    ))
