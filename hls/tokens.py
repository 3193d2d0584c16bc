"""Listener tokens for private rooms: the format, signing and checking, shared by the control
API (which signs) and the edges (which check without asking anyone).

A private room is heard at `/private/{token}/{room}/...`. The token rides in the path, not in
a query string, because players resolve a playlist's relative URIs against its path and drop
its query: every child of the master then carries the token by itself.

    token   = kid "." expires "." signature
    kid     = 1*16 ( ALPHA / DIGIT / "_" / "-" )     which secret of the ring signed it
    expires = 1*12 DIGIT                              Unix seconds, UTC
    signature = base64url, no padding, of the first 16 bytes of
                HMAC-SHA256(secret, "townsquare-listen/v1\\n" room "\\n" expires "\\n" kid)

128 bits of HMAC are as unforgeable as a random 128-bit key; the full 32 bytes would only make
URLs longer. The room and the kid are inside the MAC, so a token for one room (or re-labelled
with another key id) is worth nothing elsewhere. Checks compare in constant time.

A `KeyRing` holds several secrets by key id so secrets can be rolled: edges accept any key in
their ring; signers use the newest, the last one listed (`kid:base64secret,kid2:base64secret`).
Roll by adding the new key at the end of every edge's ring, then of the control API's, and by
removing the old one once the longest token it signed has expired.

Written by hand because it is thirty lines over `hmac` and `base64`: a JWT library would bring
a header, algorithm negotiation and JSON into a hot path that needs none of them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

from hls.names import is_valid_room

DOMAIN = b"townsquare-listen/v1\n"
SIGNATURE_BYTES = 16
MIN_SECRET_BYTES = 16  # 128 bits; shorter secrets are refused when a ring is parsed
MAX_KEYS = 16  # a ring is a handful of keys being rolled, not a database
# Edges allow this much clock difference between the signer and themselves.
DEFAULT_SKEW_SECONDS = 30.0
# No token is accepted that expires further ahead than this (plus skew): a bound on what a
# mistaken or stolen signer can hand out, and on the numbers the parser accepts.
MAX_LIFETIME_SECONDS = 7 * 24 * 3600.0

_KID = r"[A-Za-z0-9_-]{1,16}"
_KID_RE = re.compile(_KID)
_TOKEN_RE = re.compile(rf"^(?P<kid>{_KID})\.(?P<expires>\d{{1,12}})\.(?P<sig>[A-Za-z0-9_-]{{22}})$")


class TokenError(ValueError):
    """Base of the reasons a token is refused; the message is safe to show a listener.

        TokenError
        ├── MalformedToken   not kid.expires.signature, or a bad room
        ├── UnknownKey       its kid is not in this ring (being rolled, or made up)
        ├── BadSignature     forged, altered, or signed for another room
        └── ExpiredToken     past its expiry (with skew), or expiring implausibly late
    """


class MalformedToken(TokenError):
    pass


class UnknownKey(TokenError):
    pass


class BadSignature(TokenError):
    pass


class ExpiredToken(TokenError):
    pass


class KeyRingError(ValueError):
    """A key ring setting that cannot be used; the message names the rule."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid token allows: listening to `room` until `expires`."""

    room: str
    expires: int
    kid: str


@dataclass(frozen=True, slots=True)
class KeyRing:
    """Secrets by key id, in the order given; the last is the newest (the one signers use)."""

    keys: tuple[tuple[str, bytes], ...]

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """`kid:base64secret,kid2:base64secret` (standard or URL-safe base64); an empty string
        is an empty ring. KeyRingError names what is wrong, never the secret."""
        keys: list[tuple[str, bytes]] = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            kid, sep, encoded = item.partition(":")
            kid = kid.strip()
            if not sep or not _KID_RE.fullmatch(kid):
                raise KeyRingError(f"token key {kid[:16]!r}: write it as kid:base64secret, the kid "
                                   "1-16 of A-Z a-z 0-9 _ -")
            secret = _b64decode(encoded.strip())
            if secret is None:
                raise KeyRingError(f"token key {kid!r}: the secret is not base64")
            if len(secret) < MIN_SECRET_BYTES:
                raise KeyRingError(f"token key {kid!r}: the secret must be at least "
                                   f"{MIN_SECRET_BYTES} bytes (it is {len(secret)})")
            if any(k == kid for k, _ in keys):
                raise KeyRingError(f"token key {kid!r} is listed twice")
            keys.append((kid, secret))
        if len(keys) > MAX_KEYS:
            raise KeyRingError(f"a token key ring holds at most {MAX_KEYS} keys")
        return cls(tuple(keys))

    def __bool__(self) -> bool:
        return bool(self.keys)

    def secret(self, kid: str) -> bytes | None:
        for k, secret in self.keys:
            if k == kid:
                return secret
        return None

    @property
    def newest(self) -> str:
        if not self.keys:
            raise KeyRingError("no token keys are set: private rooms cannot be listened to")
        return self.keys[-1][0]


def sign(ring: KeyRing, room: str, expires: int, kid: str | None = None) -> str:
    """A token for `room` valid until `expires` (Unix seconds), signed with `kid` (the newest
    key when None)."""
    if not is_valid_room(room):
        raise MalformedToken(f"not a room name: {room!r}")
    if not 0 <= expires < 10**12:
        raise MalformedToken(f"expiry out of range: {expires}")
    kid = ring.newest if kid is None else kid
    secret = ring.secret(kid)
    if secret is None:
        raise UnknownKey(f"no token key {kid!r} in the ring")
    return f"{kid}.{expires}.{_signature(secret, room, str(expires), kid)}"


def verify(ring: KeyRing, token: str, room: str, now: float,
           skew: float = DEFAULT_SKEW_SECONDS) -> Grant:
    """The grant `token` gives for `room` at `now`, or the TokenError saying why not."""
    m = _TOKEN_RE.match(token)
    if m is None or not is_valid_room(room):
        raise MalformedToken("the listener token is malformed")
    kid, expires = m["kid"], m["expires"]
    secret = ring.secret(kid)
    if secret is None:
        raise UnknownKey("the listener token's key is not known here")
    if not hmac.compare_digest(_signature(secret, room, expires, kid), m["sig"]):
        raise BadSignature("the listener token is not valid for this room")
    at = int(expires)
    if now > at + skew:
        raise ExpiredToken("the listener token has expired")
    if at > now + MAX_LIFETIME_SECONDS + skew:
        raise ExpiredToken("the listener token expires implausibly late")
    return Grant(room, at, kid)


def _signature(secret: bytes, room: str, expires: str, kid: str) -> str:
    message = DOMAIN + f"{room}\n{expires}\n{kid}".encode("ascii")
    mac = hmac.new(secret, message, hashlib.sha256).digest()[:SIGNATURE_BYTES]
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None


# --- where tokens ride ---------------------------------------------------------------------
PRIVATE_ROOT = "private"
PRIVATE_PREFIX = f"/{PRIVATE_ROOT}/"


def listener_path(token: str, room: str, tail: str = "master.m3u8") -> str:
    """`/private/{token}/{room}/{tail}`: what a listener of a private room asks for."""
    return f"{PRIVATE_PREFIX}{token}/{room}/{tail}"


def split_token(below: str) -> tuple[str, str] | None:
    """`{token}/{room}/...` (a path below `/private/`) → (token, `{room}/...`); None when the
    first segment is not token-shaped (a room name never holds a dot, a token always does)."""
    token, sep, rest = below.partition("/")
    if not sep or "." not in token:
        return None
    return token, rest
