"""The database behind the registry: its URL, an engine tuned for the backend, and the one place
driver exceptions become registry errors.

SQLite through aiosqlite is the default (a file in the data folder, no server to run); PostgreSQL
through asyncpg is used when the URL says so. Both drivers are async, so a registry write never
blocks the event loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from registry.errors import RegistryError, RegistryUnavailable

SQLITE = "sqlite+aiosqlite"
POSTGRESQL = "postgresql+asyncpg"
DB_FILE = "townsquare.db"
READ_ONLY = "registry_read_only"  # execution option: on SQLite, begin without the write lock

# Plain or sync-driver spellings are taken to mean the async driver for the same database.
_ASYNC_DRIVERS = {
    "sqlite": SQLITE,
    SQLITE: SQLITE,
    "postgres": POSTGRESQL,
    "postgresql": POSTGRESQL,
    POSTGRESQL: POSTGRESQL,
}

# Exceptions that mean "the database is not there right now", as opposed to a bad request.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # includes TimeoutError (= asyncio.TimeoutError) and ConnectionRefusedError
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,  # no pooled connection came free in time
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # includes ConnectionDoesNotExistError
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.exceptions.QueryCanceledError,  # statement_timeout
    asyncpg.exceptions.TooManyConnectionsError,
    # The server answered but will not let this URL in (no such role, database, bad password):
    # to the caller it is the same as a database that is not there.
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidCatalogNameError,
)
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.SQLAlchemyError,
    asyncpg.PostgresError,
    *_UNAVAILABLE,
)


def default_url(data_dir: Path) -> str:
    """`sqlite+aiosqlite:///<abs data_dir>/townsquare.db`; creates `data_dir` if missing."""
    folder = Path(data_dir).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"{SQLITE}:///{folder / DB_FILE}"


def parse_url(url: str) -> URL:
    """The URL with its async driver filled in; RegistryError for anything else."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise RegistryError(f"not a database URL: {exc}") from exc
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    if driver is None:
        raise RegistryError(
            f"registry URL {redact(parsed)} is not supported: "
            f"use {SQLITE}:///path/to/file.db or {POSTGRESQL}://user@host:port/database"
        )
    return parsed.set(drivername=driver)


def redact(url: URL) -> str:
    """The URL as text with any password replaced by ***."""
    return url.render_as_string(hide_password=True)


def describe(url: URL) -> str:
    """Backend and location, never credentials: `sqlite /x/townsquare.db`, `postgresql h:p/db`."""
    if url.get_backend_name() == "sqlite":
        return f"sqlite {url.database or ':memory:'}"
    host = url.host or url.query.get("host") or "localhost"
    return f"postgresql {host}:{url.port or 5432}/{url.database or ''}"


def make_engine(url: URL, *, connect_timeout: float, command_timeout: float) -> AsyncEngine:
    """An async engine whose every wait is bounded, so a dead database fails fast."""
    if url.get_backend_name() == "sqlite":
        # sqlite3's `timeout` is the busy timeout: how long a writer waits for the file lock.
        engine = create_async_engine(
            url, pool_pre_ping=True, connect_args={"timeout": command_timeout}
        )
        event.listen(engine.sync_engine, "connect", _sqlite_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(
        url,
        pool_pre_ping=True,
        pool_timeout=command_timeout,
        connect_args={
            "timeout": connect_timeout,
            "command_timeout": command_timeout,
            # The server gives up too, so an abandoned statement does not hold locks.
            "server_settings": {"statement_timeout": str(int(command_timeout * 1000))},
        },
    )


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver, so the "begin" hook below decides how transactions start
    # (the SQLAlchemy recipe for correct SQLite transactions; it also makes DDL transactional).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # A write transaction takes the lock up front: a deferred one that reads first and writes
    # later fails with SQLITE_BUSY the moment another writer got in between, busy timeout or not.
    read_only = conn.get_execution_options().get(READ_ONLY, False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


@contextmanager
def translated(where: str) -> Iterator[None]:
    """Re-raise driver exceptions from the block as RegistryUnavailable or RegistryError."""
    try:
        yield
    except RegistryError:
        raise
    except _DRIVER_ERRORS as exc:
        if _is_unavailable(exc):
            raise RegistryUnavailable(f"{where}: database unavailable: {_reason(exc)}") from exc
        raise RegistryError(f"{where}: {_reason(exc)}") from exc


def _is_unavailable(exc: BaseException) -> bool:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, _UNAVAILABLE):
            return True
        if isinstance(err, sa_exc.DBAPIError):
            if err.connection_invalidated:
                return True
            orig = err.orig
            todo.append(orig if isinstance(orig, BaseException) else None)
        todo += [err.__cause__, err.__context__]
    return False


def _reason(exc: BaseException) -> str:
    # The driver's own error, without SQLAlchemy's echo of the statement and its parameters.
    err: BaseException = exc
    if isinstance(exc, sa_exc.DBAPIError) and isinstance(exc.orig, BaseException):
        err = exc.orig
        if err.__cause__ is not None:  # SQLAlchemy's adapters wrap the driver's exception
            err = err.__cause__
    text = str(err).strip().splitlines()
    if text:
        return f"{type(err).__name__}: {text[0]}"
    if isinstance(err, TimeoutError):
        return "TimeoutError: no answer in time"
    return type(err).__name__
