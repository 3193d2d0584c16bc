"""Object storage: a tiny `Store` interface, a local-folder and an S3 backend, and the
writer queue that keeps storage latency and outages away from the encoding loop."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from prometheus_client import Counter, Gauge

from hls.http import content_type_for_key
from hls.names import LIVE_ROOT, kind_of
from packager.errors import StoreError, StoreUnavailable
from packager.settings import StoreSettings
from serving.tasks import cancel_and_wait

log = logging.getLogger(__name__)
T = TypeVar("T")

STORE_WRITES = Counter("townsquare_store_writes_total", "Objects written to the store", ["result"])
STORE_PENDING = Gauge("townsquare_store_pending_objects", "Objects waiting to be written")

_LIVE_ONLY = frozenset({"part", "playlist", "state"})


def retention_for(key: str) -> str:
    """`live` for objects only useful while a broadcast is on air (parts, live playlists,
    state), `recording` for what the recording is made of. S3 lifecycle rules key on it."""
    below = key.partition("/")[2] if key.startswith(LIVE_ROOT + "/") else key
    return "live" if kind_of(below) in _LIVE_ONLY else "recording"


class Store(Protocol):
    """Where every object of a broadcast lands. Keys are `/`-separated relative paths."""

    async def put(self, key: str, data: bytes, cache_control: str) -> None: ...

    async def get(self, key: str) -> bytes | None: ...

    def describe(self) -> str: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"invalid store key {key!r}")
    return key


class LocalStore:
    """A folder on disk. Writes go to a temporary file that is renamed into place, so a
    reader never sees half an object and a crash leaves whole files only."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return f"folder {self.root}"

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            # mkstemp makes 0600 files; the folder may be served by another user (nginx).
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    async def put(self, key: str, data: bytes, cache_control: str) -> None:
        try:
            await asyncio.to_thread(self._put, key, data)
        except OSError as exc:
            raise StoreError(f"could not write {key}: {exc}") from exc

    def _get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    async def get(self, key: str) -> bytes | None:
        try:
            return await asyncio.to_thread(self._get, key)
        except OSError as exc:
            raise StoreError(f"could not read {key}: {exc}") from exc


class S3Store:
    """Any S3-compatible endpoint through boto3; objects keep Content-Type and
    Cache-Control so a CDN can serve the bucket directly."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        # Short timeouts and no botocore retries: StoreWriter retries with its own backoff,
        # and reads on the origin's request path must fail fast rather than hang.
        cfg = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2,
                     read_timeout=5, max_pool_connections=32)
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=cfg)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _put(self, key: str, data: bytes, cache_control: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + _check_key(key), Body=data,
                               ContentType=content_type_for_key(key), CacheControl=cache_control,
                               Tagging=f"townsquare-retention={retention_for(key)}")

    def _get(self, key: str) -> bytes | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.prefix + _check_key(key))
        except self.client.exceptions.NoSuchKey:
            return None
        body: bytes = obj["Body"].read()
        return body

    async def put(self, key: str, data: bytes, cache_control: str) -> None:
        await self._call(self._put, key, data, cache_control)

    async def get(self, key: str) -> bytes | None:
        return await self._call(self._get, key)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

        try:
            return await asyncio.to_thread(fn, *args)
        except EndpointConnectionError as exc:
            raise StoreUnavailable(f"S3 endpoint unreachable: {exc}") from exc
        except (BotoCoreError, ClientError) as exc:
            raise StoreError(f"S3 {fn.__name__.strip('_')} {args[0]} failed: {exc}") from exc


def open_store(settings: StoreSettings) -> Store:
    if settings.s3_bucket:
        return S3Store(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url,
                       settings.s3_region)
    return LocalStore(settings.data_dir)


class StoreWriter:
    """An ordered write queue in front of a store, drained by one task.

    `put()` returns at once. Failed writes are retried with exponential backoff until
    they succeed; nothing is dropped. A newer write of a key that is still waiting
    replaces the older one (playlists and state files are rewritten often)."""

    def __init__(self, store: Store, name: str, retry_max: float = 5.0):
        self.store = store
        self.name = name
        self.retry_max = retry_max
        self._pending: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    def put(self, key: str, data: bytes, cache_control: str) -> None:
        if key in self._pending:
            # Keep write order meaningful: a rewritten state file lands after the parts
            # queued before it.
            self._pending[key] = (data, cache_control)
            self._pending.move_to_end(key)
        else:
            self._pending[key] = (data, cache_control)
            STORE_PENDING.inc()
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"store-{self.name}")

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def drain(self) -> None:
        """Wait until every queued object is stored."""
        await self._idle.wait()

    async def close(self) -> None:
        await self.drain()
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                key, (data, cc) = next(iter(self._pending.items()))
                delay = 0.1
                while True:
                    try:
                        await self.store.put(key, data, cc)
                        STORE_WRITES.labels("ok").inc()
                        break
                    except StoreError as exc:
                        self.failures += 1
                        STORE_WRITES.labels("retry").inc()
                        log.warning("store %s: %s; retrying in %.1fs (%d queued)",
                                    self.store.describe(), exc, delay, len(self._pending))
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, self.retry_max)
                        # A newer version may have arrived while we slept.
                        data, cc = self._pending.get(key, (data, cc))
                # Only drop the entry if no newer version replaced what we just wrote.
                if self._pending.get(key, (None, None))[0] is data:
                    del self._pending[key]
                    STORE_PENDING.dec()
            self._idle.set()
