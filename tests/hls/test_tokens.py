"""Listener tokens: golden values pin the format edges and the control API both rely on."""

from __future__ import annotations

import base64

import pytest

from hls.tokens import (
    BadSignature,
    ExpiredToken,
    KeyRing,
    KeyRingError,
    MalformedToken,
    UnknownKey,
    listener_path,
    sign,
    split_token,
    verify,
)

SECRET = b"0123456789abcdef0123456789abcdef"
RING = KeyRing.parse("k1:" + base64.b64encode(SECRET).decode())
# Computed once and frozen: a change here breaks every URL already handed out.
GOLDEN = "k1.1790000000.sraQOxfKSUFfpi6_1zcI7w"
NOW = 1_789_990_000.0


def test_signing_is_stable() -> None:
    assert sign(RING, "quiet-room", 1_790_000_000) == GOLDEN


def test_a_valid_token_grants_its_room_until_it_expires() -> None:
    grant = verify(RING, GOLDEN, "quiet-room", NOW)
    assert (grant.room, grant.expires, grant.kid) == ("quiet-room", 1_790_000_000, "k1")


def test_skew_is_allowed_past_expiry_and_no_more() -> None:
    verify(RING, GOLDEN, "quiet-room", 1_790_000_029.0, skew=30)
    with pytest.raises(ExpiredToken):
        verify(RING, GOLDEN, "quiet-room", 1_790_000_031.0, skew=30)


@pytest.mark.parametrize("token", [
    "k1.1790000000.sraQOxfKSUFfpi6_1zcI7x",  # one character changed
    "k1.1790000001.sraQOxfKSUFfpi6_1zcI7w",  # expiry moved
])
def test_altered_tokens_are_refused(token: str) -> None:
    with pytest.raises(BadSignature):
        verify(RING, token, "quiet-room", NOW)


def test_a_token_is_worth_nothing_for_another_room() -> None:
    with pytest.raises(BadSignature):
        verify(RING, GOLDEN, "other-room", NOW)


def test_a_token_relabelled_with_another_kid_is_refused() -> None:
    ring = KeyRing.parse(f"k1:{base64.b64encode(SECRET).decode()},"
                         f"k2:{base64.b64encode(SECRET).decode()}")
    with pytest.raises(BadSignature):
        verify(ring, "k2" + GOLDEN[2:], "quiet-room", NOW)


@pytest.mark.parametrize("token", ["", "k1", "k1.17.x", "k1..abc", "k1.1790000000.sraQ/xfK",
                                   "k1.1790000000.sraQOxfKSUFfpi6_1zcI7w=", "x" * 400,
                                   "k1.99999999999999.sraQOxfKSUFfpi6_1zcI7w"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(MalformedToken):
        verify(RING, token, "quiet-room", NOW)


def test_unknown_kid_and_implausible_expiry_are_refused() -> None:
    with pytest.raises(UnknownKey):
        verify(RING, "zz" + GOLDEN[2:], "quiet-room", NOW)
    far = sign(RING, "quiet-room", int(NOW) + 30 * 24 * 3600)
    with pytest.raises(ExpiredToken, match="implausibly"):
        verify(RING, far, "quiet-room", NOW)


def test_rings_sign_with_the_last_key_and_accept_every_key() -> None:
    old = base64.urlsafe_b64encode(b"o" * 32).decode().rstrip("=")
    ring = KeyRing.parse(f" old:{old} , new:{base64.b64encode(SECRET).decode()} ")
    token = sign(ring, "quiet-room", 1_790_000_000)
    assert token.startswith("new.1790000000.")
    assert verify(ring, sign(ring, "quiet-room", 1_790_000_000, "old"), "quiet-room", NOW)
    assert not KeyRing.parse("")


@pytest.mark.parametrize(("text", "rule"), [
    ("k1", "kid:base64secret"), ("bad kid:AAAA", "kid:base64secret"),
    ("k1:!!!", "not base64"), ("k1:" + base64.b64encode(b"short").decode(), "at least 16"),
    (f"k1:{base64.b64encode(SECRET).decode()},k1:{base64.b64encode(SECRET).decode()}", "twice"),
])
def test_bad_rings_are_refused_with_the_rule(text: str, rule: str) -> None:
    with pytest.raises(KeyRingError, match=rule):
        KeyRing.parse(text)
    with pytest.raises(KeyRingError) as caught:
        KeyRing.parse(text)
    assert base64.b64encode(SECRET).decode() not in str(caught.value)


def test_paths_carry_the_token_before_the_room() -> None:
    path = listener_path(GOLDEN, "quiet-room")
    assert path == f"/private/{GOLDEN}/quiet-room/master.m3u8"
    assert split_token(path[len("/private/"):]) == (GOLDEN, "quiet-room/master.m3u8")
    assert split_token("quiet-room/master.m3u8") is None
