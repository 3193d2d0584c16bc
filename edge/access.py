"""Private rooms at the edge: check a listener token, strip it, or refuse without going upstream.

A private room is heard at `/private/{token}/{room}/...` (`hls.tokens`). The edge verifies the
token against its key ring and the room named after it, with its own clock, and turns the
request into `/private/{room}/...`: that is both the cache key (every listener of the room,
whatever their token, shares one entry) and what the upstream is asked. A forged, altered,
expired or other-room token, a key id the ring lacks, or a `/private/` path without a token
gets 403 from the edge itself (`max-age=1`, nothing upstream, nothing in the cache). The
edge needs no list of private rooms: the prefix says which requests need a token, and the
origin serves a private room under `/private/` only.

A shield (an edge whose clients are other edges) receives `/private/{room}/...` with the
token already stripped; with `trust_tokenless` it accepts that form. Never set it on an edge
listeners can reach.

`check_path` is the rule as a pure function; `PrivateAccess` wraps it for the edge's request
path, with prebuilt refusals and counts. Results must not be memoised past the request:
a token that is valid now expires later.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from edge.cache import NOT_FOUND, edge_error
from edge.entry import Entry, build_fields
from edge.targets import LIVE_PREFIX, Target, parse_target
from hls.directives import BadDirective
from hls.names import is_valid_room
from hls.tokens import (
    DEFAULT_SKEW_SECONDS,
    PRIVATE_PREFIX,
    BadSignature,
    ExpiredToken,
    KeyRing,
    TokenError,
    UnknownKey,
    split_token,
    verify,
)

PRIVATE_PREFIX_BYTES = PRIVATE_PREFIX.encode()
REFUSAL_CACHE = b"max-age=1"  # a CDN in front may keep a refusal a moment, never longer


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a `/private/` request is refused (always 403): `reason` is a short label for
    metrics, `message` is what the listener reads."""

    reason: str  # "malformed", "unknown_key", "signature", "expired", "no_token"
    message: str


def check_path(raw: str, ring: KeyRing, now: float, skew: float = DEFAULT_SKEW_SECONDS,
               trust_tokenless: bool = False) -> str | Refusal:
    """`raw` (a request target below `/private/`, query included) → the target with the token
    removed, `/private/{room}/...[?query]`, or the Refusal saying why not."""
    path, sep, query = raw.partition("?")
    below = path[len(PRIVATE_PREFIX):]
    split = split_token(below)
    if split is None:
        room = below.split("/", 1)[0]
        if trust_tokenless and is_valid_room(room):
            return raw
        return Refusal("no_token", "this room is private: its listener URL carries a token")
    token, rest = split
    room = rest.split("/", 1)[0]
    try:
        verify(ring, token, room, now, skew)
    except ExpiredToken as exc:
        return Refusal("expired", str(exc))
    except UnknownKey as exc:
        return Refusal("unknown_key", str(exc))
    except BadSignature as exc:
        return Refusal("signature", str(exc))
    except TokenError as exc:
        return Refusal("malformed", str(exc))
    return f"{PRIVATE_PREFIX}{rest}{sep}{query}"


class PrivateAccess:
    """The edge's side of private rooms: `resolve(url, now)` for a `/private/` request target
    gives the `Target` to serve it with (its key and upstream target below `/private/`), or
    the refusal or error `Entry` to answer with at once."""

    def __init__(self, ring: KeyRing, skew: float = DEFAULT_SKEW_SECONDS,
                 trust_tokenless: bool = False) -> None:
        self.ring = ring
        self.skew = skew
        self.trust_tokenless = trust_tokenless
        self.refused: Counter[str] = Counter()  # by Refusal.reason
        self.granted = 0
        self._refusals: dict[str, Entry] = {}

    def resolve(self, url: bytes, now: float) -> Target | Entry:
        outcome = check_path(url.decode("latin-1"), self.ring, now, self.skew,
                             self.trust_tokenless)
        if isinstance(outcome, Refusal):
            self.refused[outcome.reason] += 1
            return self._refusal(outcome)
        try:
            # The grammar and directives are the public ones: read it as `/live/`, then move
            # the path and key (the cache key and the upstream target) below `/private/`.
            as_live = parse_target(LIVE_PREFIX + outcome[len(PRIVATE_PREFIX):])
        except BadDirective as exc:
            return edge_error(400, str(exc))
        if not as_live.public:
            return NOT_FOUND  # names nothing listeners may ask for, as under /live/
        self.granted += 1
        return replace(as_live, path=PRIVATE_PREFIX + as_live.path[len(LIVE_PREFIX):],
                       key=PRIVATE_PREFIX + as_live.key[len(LIVE_PREFIX):])

    def _refusal(self, refusal: Refusal) -> Entry:
        entry = self._refusals.get(refusal.message)
        if entry is None:
            fields = build_fields("other", b"text/plain; charset=utf-8", REFUSAL_CACHE, [])
            entry = Entry(403, "other", refusal.message.encode() + b"\n", fields, 0.0, 0.0,
                          aged=False)
            if len(self._refusals) < 64:  # a handful of fixed messages; bounded regardless
                self._refusals[refusal.message] = entry
        return entry
