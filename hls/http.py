"""What an LL-HLS answer carries besides its body: content type, CORS and cache lifetime.

Lifetimes follow Appendix B of LLHLS.md; the origin sets them and the edge falls back on
`default_lifetime` when an upstream answer names none. A live playlist is long-lived only
when it answers a blocking request whose URL is never asked again: one that waited for its
part, in the middle of a segment. A URL that may be asked again (the part already existed,
or the answer ends on a segment boundary, where video.js 8 asks for the part it just got
once more) gets the newest playlist with a lifetime no longer than one part target: zero
whole seconds, so a browser asks the network next time instead of replaying an old copy
(video.js froze for ~10 s on a 12 s lifetime). Only a playlist with ENDLIST is kept long.
"""

from __future__ import annotations

import os

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
MEDIA_TYPE = "audio/mp4"
JSON_TYPE = "application/json"
OTHER_TYPE = "application/octet-stream"

_BY_SUFFIX = {".m3u8": PLAYLIST_TYPE, ".m4s": MEDIA_TYPE, ".mp4": MEDIA_TYPE, ".json": JSON_TYPE}
_BY_KIND = {"master": PLAYLIST_TYPE, "playlist": PLAYLIST_TYPE,
            "blocking_playlist": PLAYLIST_TYPE, "recording": PLAYLIST_TYPE,
            "part": MEDIA_TYPE, "segment": MEDIA_TYPE, "init": MEDIA_TYPE,
            "state": JSON_TYPE, "room": JSON_TYPE, "status": JSON_TYPE, "directory": JSON_TYPE}

# Players in web pages read Age for their latency estimate.
CORS_HEADERS: tuple[tuple[str, str], ...] = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Expose-Headers", "Age, Content-Length, Date"),
)
PREFLIGHT_HEADERS: tuple[tuple[str, str], ...] = (
    ("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS"),
    ("Access-Control-Allow-Headers", "*"),
    ("Access-Control-Max-Age", "86400"),
)

# Media objects never change once written: their names are unique.
IMMUTABLE = "public, max-age=86400, immutable"
# A playlist with ENDLIST, or a recording that is complete, no longer changes either.
FINAL = "public, max-age=86400"
# Answers that must not outlive a part or two: masters, errors of live objects.
SHORT = "public, max-age=1"
# Refusals (404, 400) of paths that may become valid: short, so a new room is seen soon.
REFUSED = "public, max-age=2"
NO_STORE = "no-store"
# A room's status is composed about once a second, the directory of rooms about as often: an
# edge asks its upstream once per lifetime however many pages poll them.
STATUS_SECONDS = 1
DIRECTORY_SECONDS = 2
STATUS_CACHE = f"public, max-age={STATUS_SECONDS}"
DIRECTORY_CACHE = f"public, max-age={DIRECTORY_SECONDS}"


def content_type_for_key(key: str) -> str:
    """The content type of a stored object, by its name's suffix."""
    return _BY_SUFFIX.get(os.path.splitext(key)[1], OTHER_TYPE)


def content_type_for_kind(kind: str) -> str:
    return _BY_KIND.get(kind, OTHER_TYPE)


def max_age(seconds: float) -> str:
    return f"public, max-age={max(0, int(seconds))}"


def playlist_lifetime(target_duration: int, blocking: bool, part_target: float = 0.0,
                      asked_again: bool = False) -> int:
    """Success lifetime of a live media playlist, in whole seconds.

    A blocking answer whose URL is never asked again: 6 × TD. One whose URL may be asked
    again (`asked_again`): at most one part target, rounded down (0 for any part target under
    a second), since the live edge moves on within a part. A plain request: ½ × TD (at least
    1 s)."""
    if blocking and asked_again:
        return int(part_target)
    return 6 * target_duration if blocking else max(1, target_duration // 2)


def asked_again(already_there: bool, segment_open: bool) -> bool:
    """Whether a client may ask a blocking URL again: when its part already existed (video.js
    re-asks at segment boundaries), or when the answer ends on a segment boundary with no
    part of the next one yet (video.js 8 then asks for the part it just got once more)."""
    return already_there or not segment_open


def live_playlist_cache(target_duration: int, blocking: bool, part_target: float = 0.0,
                        again: bool = False) -> str:
    """The Cache-Control of a live (not ended) media playlist: `playlist_lifetime`."""
    return max_age(playlist_lifetime(target_duration, blocking, part_target, again))


def stored_playlist_cache(body: bytes, live: str) -> str:
    """The Cache-Control of a playlist read back from the store: FINAL once it has ENDLIST,
    else `live` (a copy that the live edge overtakes within a segment)."""
    return FINAL if b"#EXT-X-ENDLIST" in body else live


def default_lifetime(kind: str, status: int, target_duration: float) -> float:
    """Appendix B: the lifetime of an answer by kind and status, in seconds (the status and
    directory documents live their own short lifetimes, whatever the status)."""
    ok = 200 <= status < 300
    if kind == "status":
        return STATUS_SECONDS
    if kind == "directory":
        return DIRECTORY_SECONDS
    if kind == "blocking_playlist":
        return (6 if ok else 4) * target_duration
    if kind in ("master", "playlist", "recording"):
        return (0.5 if ok else 1) * target_duration
    return (60 if ok else 1) * target_duration
