"""Stream keys: random, shown once, kept only as a hash, compared in constant time.

A key is 192 random bits (`tsk_` + 32 URL-safe characters). A key that random needs no
slow password hash: SHA-256 of it cannot be reversed or guessed, and checking it stays
cheap enough to do for every RTMP publish and WHIP offer.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX = "tsk_"
KEY_BYTES = 24  # 192 bits; the rule is at least 128


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(KEY_BYTES)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key).encode(), stored_hash.encode())
