"""What one client may cost ingest: deadlines, byte caps, connection counts and request rates.

    RtmpLimits        deadlines and caps of one RTMP connection, and how many one address
                      and the whole port may hold
    AddressCounts     open connections (or sessions) per remote address, with a ceiling
    RateLimiter       token buckets per key (address, token), a bounded table of them

Written here rather than taken from a library: the counts follow connection lifetimes
(acquire on accept, release on close), which request-rate libraries do not model, and the
token bucket is a dozen lines; slowapi/limits would add two dependencies and a storage layer
for what a dict does in one process.
"""

from __future__ import annotations

import math
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from ingest.errors import ConfigError
from ingest.rtmp.chunk import Limits
from ingest.settings import IngestSettings

# Before the stream key is checked a publisher sends Set Chunk Size, connect, createStream
# and publish: well under 1 KiB from ffmpeg and OBS.
PREAUTH_MESSAGE_BYTES = 16_384
PREAUTH_CHUNK_STREAMS = 8


@dataclass(frozen=True, slots=True)
class RtmpLimits:
    """Deadlines and caps of RTMP connections (settings `rtmp_*`)."""

    # C0+C1 in, S0+S1+S2 out, C2 in: a whole handshake, however slowly its bytes trickle.
    handshake_seconds: float = 10.0
    # From the end of the handshake to NetStream.Publish.Start (the key is checked then).
    publish_seconds: float = 10.0
    # A publishing connection that sends nothing for this long is gone.
    idle_seconds: float = 10.0
    # Bytes a connection may send after the handshake and before its key is accepted.
    preauth_bytes: int = 65_536
    max_connections: int = 256
    max_per_address: int = 32
    # Chunk-stream bounds once the key is accepted; before it, `preauth_chunk`.
    chunk: Limits = field(default_factory=Limits)

    @property
    def preauth_chunk(self) -> Limits:
        return Limits(max_chunk_size=min(self.chunk.max_chunk_size, self.preauth_bytes),
                      max_message_size=min(self.chunk.max_message_size, PREAUTH_MESSAGE_BYTES,
                                           self.preauth_bytes),
                      max_chunk_streams=min(self.chunk.max_chunk_streams,
                                            PREAUTH_CHUNK_STREAMS))

    def check(self) -> RtmpLimits:
        """Self, once every value can work; ConfigError naming the rule otherwise."""
        if self.handshake_seconds <= 0 or self.publish_seconds <= 0 or self.idle_seconds <= 0:
            raise ConfigError("RTMP deadlines (rtmp_handshake_seconds, rtmp_publish_seconds, "
                              "rtmp_idle_seconds) must be positive")
        if self.preauth_bytes < 4096:
            raise ConfigError("rtmp_preauth_bytes must be at least 4096 (connect and publish "
                              "from OBS or ffmpeg take about 1 KiB)")
        if self.max_per_address < 1 or self.max_connections < 1:
            raise ConfigError("rtmp_max_connections and rtmp_max_connections_per_address must "
                              "be at least 1")
        return self


def rtmp_limits(settings: IngestSettings) -> RtmpLimits:
    return RtmpLimits(handshake_seconds=settings.rtmp_handshake_seconds,
                      publish_seconds=settings.rtmp_publish_seconds,
                      idle_seconds=settings.rtmp_idle_seconds,
                      preauth_bytes=settings.rtmp_preauth_bytes,
                      max_connections=settings.rtmp_max_connections,
                      max_per_address=settings.rtmp_max_connections_per_address).check()


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """A server TLS context for RTMPS; ConfigError names the file that cannot be used."""
    if cert is None or key is None:
        raise ConfigError("RTMPS needs TOWNSQUARE_RTMPS_CERT and TOWNSQUARE_RTMPS_KEY "
                          "(PEM certificate chain and private key) with TOWNSQUARE_RTMPS_PORT")
    for path in (cert, key):
        if not path.is_file():
            raise ConfigError(f"RTMPS: {path} does not exist")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"RTMPS: cannot load certificate {cert} with key {key}: {exc}") from exc
    return context


class AddressCounts:
    """Open connections per remote address, at most `ceiling` each."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self._open: dict[str, int] = {}

    def acquire(self, address: str) -> bool:
        """Count one more for `address`; False (nothing counted) when it has `ceiling`."""
        n = self._open.get(address, 0)
        if n >= self.ceiling:
            return False
        self._open[address] = n + 1
        return True

    def release(self, address: str) -> None:
        n = self._open.get(address, 0) - 1
        if n > 0:
            self._open[address] = n
        else:
            self._open.pop(address, None)

    def count(self, address: str) -> int:
        return self._open.get(address, 0)

    @property
    def addresses(self) -> int:
        return len(self._open)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets: `rate` requests a second per key, bursts of `burst`. At most
    `max_keys` buckets are kept; the least recently used goes first (a forgotten key starts
    with a full bucket, so eviction can only be kind, never unfair)."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000) -> None:
        if rate <= 0 or burst < 1:
            raise ConfigError("a request rate must be positive with a burst of at least 1")
        self.rate, self.burst, self.max_keys = rate, float(burst), max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str, now: float | None = None) -> float:
        """Spend one token of `key`: 0.0 when allowed, else the seconds until one is due."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    @property
    def keys(self) -> int:
        return len(self._buckets)


def retry_after_header(seconds: float) -> str:
    """Retry-After takes whole seconds; never 0, or clients retry at once."""
    return str(max(1, math.ceil(seconds)))
