"""Errors raised by the packager, the store and the origin.

    PackagerError
    ├── StoreError              a store operation failed (the backend's error is chained)
    │   ├── StoreUnavailable    the backend cannot be reached at all; worth retrying
    │   │   └── StoreFull       a local folder whose filesystem has no space left
    │   ├── StoreMisconfigured  the store can never work as configured (no such bucket,
    │   │                       access denied, a folder that cannot be written): an operator
    │   │                       must act; the message says what is wrong
    │   └── ObjectRejected      this object can never be stored (an invalid key): a caller's
    │                           bug, never retried
    ├── SpillCorrupt            an object spilled to local disk is torn or unreadable
    ├── EncodeError             PyAV could not open an encoder or encode a frame
    └── BroadcastClosed         audio was fed to a broadcast that has ended

Any other `StoreError` is transient: the same write may succeed later.
"""


class PackagerError(Exception):
    pass


class StoreError(PackagerError):
    pass


class StoreUnavailable(StoreError):
    pass


class StoreFull(StoreUnavailable):
    """A local store's filesystem is full. `device` is its st_dev, so that a caller can
    tell whether its spill folder is on the same, full, filesystem."""

    def __init__(self, message: str, device: int | None = None) -> None:
        super().__init__(message)
        self.device = device


class StoreMisconfigured(StoreError):
    pass


class ObjectRejected(StoreError):
    pass


class SpillCorrupt(PackagerError):
    pass


class EncodeError(PackagerError):
    pass


class BroadcastClosed(PackagerError):
    pass
