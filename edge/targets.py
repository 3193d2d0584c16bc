"""Request targets turned into cache keys: the path plus the canonical `_HLS_*` directives.

Every query parameter other than `_HLS_msn`, `_HLS_part` and `_HLS_skip` is dropped before the
key is formed (and directives on anything but a media playlist are ignored), so random query
strings on a known path share one cache entry. Paths are read with the object grammar of
`hls.names`: a path that names no object listeners may ask for (kind not in PUBLIC_KINDS) is
refused by the edge itself, and a path that is not plain (escapes, dot segments, empty
segments) is refused before that, so no spelling of a path can fork its cache key.
"""

from __future__ import annotations

from dataclasses import dataclass

from hls.directives import BadDirective, parse_query
from hls.names import LIVE_PLAYLIST, LIVE_ROOT, PLAYLIST_KINDS, PUBLIC_KINDS, parse_object

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
    msn: int | None = None  # directives of a playlist request
    part: int | None = None
    skip: str | None = None
    rendition: str | None = None  # what a media object's name says
    epoch: str | None = None
    media_msn: int | None = None
    media_part: int | None = None

    @property
    def is_playlist(self) -> bool:
        return self.kind in PLAYLIST_TARGETS

    @property
    def blocking(self) -> bool:
        return self.msn is not None

    @property
    def public(self) -> bool:
        """Whether the path names an object listeners may ask for (else: 404 at the edge)."""
        return self.kind in PUBLIC_KINDS or self.kind == "blocking_playlist"

    @property
    def live_path(self) -> str | None:
        """The live playlist of the rendition a media object belongs to."""
        if self.rendition is None or self.epoch is None:
            return None
        # Below the path's own prefix: /live/ or, for a private room, /private/.
        prefix = self.path[:self.path.index("/", 1) + 1]
        return f"{prefix}{self.room}/{self.rendition}/{LIVE_PLAYLIST}"


def parse_target(raw: str) -> Target:
    """Parse a `/live/...` request target; raise BadDirective for a path that is not plain or
    malformed `_HLS_*` values."""
    path, _, query = raw.partition("?")
    if ("%" in path or "//" in path or "/./" in path or "/../" in path
            or path.endswith(("/.", "/.."))):
        raise BadDirective("path must be plain: no escapes, no dot or empty segments")
    below = path[len(LIVE_PREFIX):]
    obj = parse_object(below)
    if obj is None:
        return Target(path=path, key=path, kind="other", room=below.split("/", 1)[0])
    room = obj.room
    if obj.epoch is not None:
        return Target(path=path, key=path, kind=obj.kind, room=room, rendition=obj.rendition,
                      epoch=obj.epoch, media_msn=obj.msn, media_part=obj.part)
    if not query or obj.kind != "playlist":
        return Target(path=path, key=path, kind=obj.kind, room=room, rendition=obj.rendition)
    d = parse_query(query)
    if d.empty:
        return Target(path=path, key=path, kind="playlist", room=room, rendition=obj.rendition)
    return Target(
        path=path,
        key=path + "?" + d.query(),
        kind="blocking_playlist" if d.blocking else "playlist",
        room=room,
        msn=d.msn,
        part=d.part,
        skip=d.skip,
        rendition=obj.rendition,
    )
