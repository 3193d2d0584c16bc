"""Errors raised by the packager, the store and the origin.

    PackagerError
    ├── StoreError            a store operation failed (the backend's error is chained)
    │   └── StoreUnavailable  the backend cannot be reached at all
    ├── EncodeError           PyAV could not open an encoder or encode a frame
    └── BroadcastClosed       audio was fed to a broadcast that has ended
"""


class PackagerError(Exception):
    pass


class StoreError(PackagerError):
    pass


class StoreUnavailable(StoreError):
    pass


class EncodeError(PackagerError):
    pass


class BroadcastClosed(PackagerError):
    pass
