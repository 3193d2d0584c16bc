"""Errors the registry raises; nothing from SQLAlchemy or a driver escapes the package.

    RegistryError              an operation failed (also: a legacy room file that cannot be read)
    ├── RegistryUnavailable    the database cannot be reached: refused, lost, timed out, locked
    ├── RoomTaken              a room with that name is still open (waiting or live)
    ├── RoomClosed             the room has ended: what was asked applies to open rooms only
    ├── NoSuchRoom             no room has that name
    └── NoSuchNode             no node has that id in the directory (heartbeat before register)

Driver exceptions (SQLAlchemy's `OperationalError`/`InterfaceError`, asyncpg's connection
errors, `OSError`, timeouts) are translated in `registry.engine.translated` with
`raise ... from exc`, so the cause stays visible in tracebacks.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every error the registry raises."""


class RegistryUnavailable(RegistryError):
    """The database could not be reached or did not answer in time; retrying later may work."""


class RoomTaken(RegistryError):
    """A waiting or live room already has that name."""


class RoomClosed(RegistryError):
    """The room has ended; its key can no longer change."""


class NoSuchRoom(RegistryError):
    """No room has that name."""


class NoSuchNode(RegistryError):
    """No node has that id in the directory: register it (again) before heartbeating."""
