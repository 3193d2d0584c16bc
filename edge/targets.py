"""Request targets turned into cache keys: the path plus the canonical `_HLS_*` directives.

Every query parameter other than `_HLS_msn`, `_HLS_part` and `_HLS_skip` is dropped before the
key is formed (and directives on anything but a media playlist are ignored), so random query
strings on a known path share one cache entry. Paths are classified by the object grammar in
`hls.names`; a path it does not know is kind "other" and still goes upstream.
"""

from __future__ import annotations

from dataclasses import dataclass

from hls.directives import BadDirective, parse_query
from hls.names import LIVE_ROOT, PLAYLIST_KINDS, kind_of

LIVE_PREFIX = f"/{LIVE_ROOT}/"
# Kinds the edge answers as playlists ("blocking_playlist" is a playlist asked with _HLS_msn).
PLAYLIST_TARGETS = PLAYLIST_KINDS | {"blocking_playlist"}


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
        return self.kind in PLAYLIST_TARGETS

    @property
    def blocking(self) -> bool:
        return self.msn is not None


def parse_target(raw: str) -> Target:
    """Parse a `/live/...` request target; raise BadDirective for malformed `_HLS_*` values."""
    path, _, query = raw.partition("?")
    if "%" in path or "/../" in path or path.endswith("/..") or "//" in path:
        raise BadDirective("path must be plain: no escapes, no dot segments")
    below = path[len(LIVE_PREFIX):]
    kind: str = kind_of(below)
    room = below.split("/", 1)[0]
    if not query or kind != "playlist":
        return Target(path=path, key=path, kind=kind, room=room)
    d = parse_query(query)
    if d.empty:
        return Target(path=path, key=path, kind=kind, room=room)
    return Target(
        path=path,
        key=path + "?" + d.query(),
        kind="blocking_playlist" if d.blocking else "playlist",
        room=room,
        msn=d.msn,
        part=d.part,
        skip=d.skip,
    )
