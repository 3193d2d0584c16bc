"""Object storage: a tiny `Store` interface with a local-folder and an S3 backend.

Backends translate their own failures once, here, into the errors of `packager.errors`,
so that callers decide on the class alone:

- `StoreMisconfigured`: it will never work until an operator acts (no such bucket, access
  denied, bad credentials, a folder that cannot be written); the message names the bucket
  or folder and says what is wrong.
- `StoreUnavailable`: the backend cannot be reached or is overloaded; retry later.
  `StoreFull`, one kind of it: a local folder whose filesystem has no space left (or a
  quota reached); retry once space is freed, and do not spill onto the same filesystem.
- `ObjectRejected`: this one object can never be stored (an invalid key); do not retry.
- any other `StoreError`: transient, retry.

Each backend runs its blocking calls on its own thread pool, never on asyncio's default
executor: the encoder uses that one, and a store that hangs must not starve it (nor the
other way round). Writing with retries, a memory bound and spilling lives in
`packager.writer`.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hls.http import content_type_for_key
from hls.names import LIVE_ROOT, kind_of
from packager.errors import (
    ObjectRejected,
    StoreError,
    StoreFull,
    StoreMisconfigured,
    StoreUnavailable,
)
from packager.settings import StoreSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

# No space (or no quota) left: retryable once an operator or a cleanup frees space.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# What a probe writes to find out whether a full disk has room again: an empty file would
# fit on a full filesystem, a part-sized one tells.
_PROBE_BYTES = 64 * 1024
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


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

    async def check(self) -> None:
        """Raise `StoreMisconfigured` if the store can never work as configured,
        `StoreUnavailable` if it cannot be reached now."""
        ...

    async def expire(self, keys: list[str]) -> int:
        """Remove live-only objects nobody will ask for again (parts whose segment is
        stored and has left every live playlist); returns how many it removed. A store whose
        own retention removes them may leave them to it. Raises StoreError; the caller only
        logs it."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Every key starting with `prefix`, sorted (for repair tools, not hot paths)."""
        ...

    def describe(self) -> str: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ObjectRejected(f"invalid store key {key!r}")
    return key


def _check_prefix(prefix: str) -> str:
    """A listing prefix: a key, a key's start, or a folder ending in `/`; empty is all."""
    if prefix:
        _check_key(prefix.removesuffix("/"))
    return prefix


class LocalStore:
    """A folder on disk. Writes go to a temporary file that is renamed into place, so a
    reader never sees half an object and a crash leaves whole files only."""

    # Local disk answers in microseconds; a few threads keep a slow disk from blocking
    # the writer's other uploads without competing with the encoder for cores.
    THREADS = 4

    def __init__(self, root: Path, threads: int = THREADS):
        self.root = root.resolve()
        # Best effort: `check()` reports a folder that cannot be made, in words.
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="townsquare-folder")
        self._names = itertools.count()  # temporary files' names (`next` is atomic in CPython)

    def describe(self) -> str:
        return f"folder {self.root}"

    def close(self) -> None:
        """Stop the store's threads (calls in progress finish)."""
        self._pool.shutdown(wait=False)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _temporary(self, folder: Path) -> tuple[int, str]:
        """A new file of our own in `folder`, open for writing, made 0600 as `mkstemp` makes
        it. Named from the process, the thread and a counter rather than by `mkstemp`, whose
        random names were a tenth of a small write here (48 against 44 µs); `O_EXCL` still
        refuses a name already taken (a file left by a crashed process of the same pid),
        and the next is tried."""
        prefix = f"{folder}/.tmp-{os.getpid()}-{threading.get_ident()}-"
        while True:
            tmp = f"{prefix}{next(self._names)}"
            try:
                return os.open(tmp, _CREATE, 0o600), tmp
            except FileExistsError:
                continue

    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            fd, tmp = self._temporary(path.parent)
        except (FileNotFoundError, NotADirectoryError):
            # A new folder (a new epoch's, say), made only then: a `mkdir` per write cost
            # two system calls and an exception. A file in its way fails here, as before.
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = self._temporary(path.parent)
        try:
            # Made 0600; the folder may be served by another user (nginx).
            os.fchmod(fd, 0o644)
            written = os.write(fd, data)
            while written < len(data):  # a short write: only ever for large objects
                written += os.write(fd, memoryview(data)[written:])
            os.close(fd)
            fd = -1
            os.replace(tmp, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    async def put(self, key: str, data: bytes, cache_control: str) -> None:
        _check_key(key)
        try:
            await self._run(self._put, key, data)
        except OSError as exc:
            raise self._error(f"could not write {key}", exc) from exc

    def _get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    async def get(self, key: str) -> bytes | None:
        _check_key(key)
        try:
            return await self._run(self._get, key)
        except OSError as exc:
            raise self._error(f"could not read {key}", exc) from exc

    def _check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-check-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(bytes(_PROBE_BYTES))
        finally:
            os.unlink(tmp)

    async def check(self) -> None:
        try:
            await self._run(self._check)
        except OSError as exc:
            if exc.errno in _FULL_ERRNOS:
                raise self._full(exc) from exc
            if isinstance(exc, FileExistsError) or exc.errno == errno.ENOTDIR:
                raise StoreMisconfigured(f"folder {self.root} cannot be made: a file is in "
                                         f"the way ({exc.strerror})") from exc
            raise StoreMisconfigured(f"folder {self.root} is not writable: {exc.strerror}") from exc

    def _expire(self, keys: list[str]) -> int:
        removed = 0
        for key in keys:
            try:
                self._path(key).unlink()
                removed += 1
            except (FileNotFoundError, NotADirectoryError):
                pass
        return removed

    async def expire(self, keys: list[str]) -> int:
        """A folder has no lifecycle rules: the files go now."""
        for key in keys:
            _check_key(key)
        try:
            return await self._run(self._expire, keys)
        except OSError as exc:
            raise self._error(f"could not remove {len(keys)} expired objects", exc) from exc

    def _list(self, prefix: str) -> list[str]:
        # Walk only the deepest folder the prefix names, then match the rest as text, as
        # S3 does ("live/r" lists "live/r/…" and "live/room/…").
        folder = self.root / prefix.rpartition("/")[0]
        keys = []
        for dirpath, _dirs, files in os.walk(folder):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    async def list(self, prefix: str) -> list[str]:
        _check_prefix(prefix)
        try:
            return await self._run(self._list, prefix)
        except OSError as exc:
            raise self._error(f"could not list {prefix!r}", exc) from exc

    def _error(self, what: str, exc: OSError) -> StoreError:
        if exc.errno in _FULL_ERRNOS:
            return self._full(exc)
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return StoreMisconfigured(f"folder {self.root} is not writable: {exc.strerror}")
        if exc.errno in (errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR):
            # The key collides with a folder (or is too long): it will never fit.
            return ObjectRejected(f"{what}: {exc.strerror}")
        return StoreError(f"{what}: {exc}")

    def _full(self, exc: OSError) -> StoreFull:
        try:
            device: int | None = os.stat(self.root).st_dev
        except OSError:
            device = None
        return StoreFull(f"folder {self.root} is full ({exc.strerror}): objects are kept "
                         "and written once space is freed", device)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)


# S3 error codes that mean the bucket or the credentials are wrong, not this request.
_MISCONFIGURED = {
    "NoSuchBucket": "S3 bucket {bucket!r} does not exist",
    "InvalidBucketName": "{bucket!r} is not a valid S3 bucket name",
    "AccessDenied": "access to S3 bucket {bucket!r} denied: check the credentials/role",
    "403": "access to S3 bucket {bucket!r} denied: check the credentials/role",
    "AllAccessDisabled": "all access to S3 bucket {bucket!r} is disabled",
    "InvalidAccessKeyId": "S3 does not know the access key used for bucket {bucket!r}: "
                          "check the credentials/role",
    "SignatureDoesNotMatch": "S3 rejected the signature of requests to bucket {bucket!r}: "
                             "check the secret access key",
}
# Codes for one object that no retry can fix.
_REJECTED = frozenset({"KeyTooLongError", "EntityTooLarge", "InvalidObjectName"})


class S3Store:
    """Any S3-compatible endpoint through boto3; objects keep Content-Type and
    Cache-Control so a CDN can serve the bucket directly."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None, threads: int = 16):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        # Short timeouts and one botocore retry (the client config's `max_attempts` counts
        # retries, not attempts): a request whose connection the server closed as it went
        # out (S3 lets idle keep-alive connections go) is sent once more, after botocore's
        # standard-mode backoff. Anything more is the writer's to retry, with its own
        # backoff, and reads on the origin's request path must fail fast rather than hang.
        # One pooled connection per thread.
        cfg = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2,
                     read_timeout=5, max_pool_connections=threads)
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=cfg)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="townsquare-s3")

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def close(self) -> None:
        """Stop the store's threads (calls in progress finish)."""
        self._pool.shutdown(wait=False)

    def _put(self, key: str, data: bytes, cache_control: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data,
                               ContentType=content_type_for_key(key), CacheControl=cache_control,
                               Tagging=f"townsquare-retention={retention_for(key)}")

    def _get(self, key: str) -> bytes | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except self.client.exceptions.NoSuchKey:
            return None
        body: bytes = obj["Body"].read()
        return body

    def _check(self) -> None:
        # Not head_bucket: that needs s3:ListBucket without a prefix condition, which the
        # writer role in infra/modules/storage deliberately lacks, so it would say "access
        # denied" for a deployment that works. Listing one key under our prefix is allowed
        # and answers NoSuchBucket / AccessDenied just the same.
        self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)

    def _list(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix)
        skip = len(self.prefix)
        return sorted(o["Key"][skip:] for page in pages for o in page.get("Contents", []))

    async def put(self, key: str, data: bytes, cache_control: str) -> None:
        await self._call(f"put {key}", self._put, _check_key(key), data, cache_control)

    async def get(self, key: str) -> bytes | None:
        return await self._call(f"get {key}", self._get, _check_key(key))

    async def check(self) -> None:
        await self._call("check", self._check)

    async def expire(self, keys: list[str]) -> int:
        """Left to the bucket's lifecycle rule on `townsquare-retention=live`
        (`live_expiration_days` in infra/modules/storage, one by default): a delete per part
        would add a request for every part put."""
        return 0

    async def list(self, prefix: str) -> list[str]:
        return await self._call(f"list {prefix!r}", self._list, _check_prefix(prefix))

    async def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionClosedError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except ClientError as exc:
            raise self._client_error(what, exc) from exc
        except (BotoConnectionError, ConnectionClosedError, ReadTimeoutError) as exc:
            raise StoreUnavailable(f"S3 endpoint for bucket {self.bucket!r} unreachable: "
                                   f"{exc}") from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StoreMisconfigured(f"no usable AWS credentials for S3 bucket "
                                     f"{self.bucket!r}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"S3 {what} failed: {exc}") from exc

    def _client_error(self, what: str, exc: Any) -> StoreError:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _MISCONFIGURED:
            return StoreMisconfigured(_MISCONFIGURED[code].format(bucket=self.bucket))
        if code in _REJECTED:
            return ObjectRejected(f"S3 {what} rejected: {code}: {err.get('Message', '')}")
        if isinstance(status, int) and (status >= 500 or status == 429) or code == "SlowDown":
            return StoreUnavailable(f"S3 bucket {self.bucket!r} unavailable: {code} ({status})")
        return StoreError(f"S3 {what} failed: {exc}")


def open_store(settings: StoreSettings) -> Store:
    if settings.s3_bucket:
        return S3Store(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url,
                       settings.s3_region, threads=2 * settings.store_concurrency)
    return LocalStore(settings.data_dir)

