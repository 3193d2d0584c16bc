"""Request targets turned into cache keys: path plus the canonical `_HLS_*` directives.

Every query parameter other than `_HLS_msn`, `_HLS_part` and `_HLS_skip` is dropped before the
key is formed, so random query strings cannot reach the upstream.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.errors import BadDirective

LIVE_PREFIX = "/live/"
PLAYLIST_KINDS = frozenset({"master", "playlist", "blocking_playlist", "recording"})
MAX_MSN = 2**53

# Content types by kind, used when the upstream sends none.
CONTENT_TYPES = {
    "master": b"application/vnd.apple.mpegurl",
    "playlist": b"application/vnd.apple.mpegurl",
    "blocking_playlist": b"application/vnd.apple.mpegurl",
    "recording": b"application/vnd.apple.mpegurl",
    "part": b"audio/mp4",
    "segment": b"audio/mp4",
    "init": b"audio/mp4",
    "other": b"application/octet-stream",
}


@dataclass(frozen=True, slots=True)
class Target:
    """One proxied request, reduced to what decides its answer."""

    path: str
    key: str  # also the upstream request target
    kind: str
    room: str
    msn: int | None = None
    part: int | None = None
    skip: str | None = None

    @property
    def is_playlist(self) -> bool:
        return self.kind in PLAYLIST_KINDS

    @property
    def blocking(self) -> bool:
        return self.msn is not None


def kind_of(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    if name.endswith(".m3u8"):
        if name == "master.m3u8":
            return "master"
        if name == "recording.m3u8":
            return "recording"
        return "playlist"
    if name.endswith(".m4s"):
        return "part" if name.startswith("p") else "segment"
    if name.endswith(".mp4"):
        return "init"
    return "other"


def _number(name: str, value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 16:
        raise BadDirective(f"{name} must be a non-negative integer, got {value!r}")
    n = int(value)
    if n > MAX_MSN:
        raise BadDirective(f"{name} out of range: {value}")
    return n


def parse_target(raw: str) -> Target:
    """Parse a `/live/...` request target; raise BadDirective for malformed `_HLS_*` values."""
    path, _, query = raw.partition("?")
    if "%" in path or "/../" in path or path.endswith("/..") or "//" in path:
        raise BadDirective("path must be plain: no escapes, no dot segments")
    kind = kind_of(path)
    room = path[len(LIVE_PREFIX):].split("/", 1)[0]
    if not query or kind not in ("playlist",):
        return Target(path=path, key=path, kind=kind, room=room)
    found: dict[str, str] = {}
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name in ("_HLS_msn", "_HLS_part", "_HLS_skip"):
            if name in found and found[name] != value:
                raise BadDirective(f"{name} given twice with different values")
            found[name] = value
    if not found:
        return Target(path=path, key=path, kind=kind, room=room)
    msn = _number("_HLS_msn", found["_HLS_msn"]) if "_HLS_msn" in found else None
    part = _number("_HLS_part", found["_HLS_part"]) if "_HLS_part" in found else None
    if part is not None and msn is None:
        raise BadDirective("_HLS_part needs _HLS_msn")
    skip = found.get("_HLS_skip")
    if skip is not None and skip not in ("YES", "v2"):
        raise BadDirective(f"_HLS_skip must be YES or v2, got {skip!r}")
    params = []
    if msn is not None:
        params.append(f"_HLS_msn={msn}")
    if part is not None:
        params.append(f"_HLS_part={part}")
    if skip is not None:
        params.append(f"_HLS_skip={skip}")
    key = path + "?" + "&".join(params)
    return Target(
        path=path,
        key=key,
        kind="blocking_playlist" if msn is not None else "playlist",
        room=room,
        msn=msn,
        part=part,
        skip=skip,
    )
