"""The edge's rule for `/private/` paths, as a pure function: tokens checked, stripped, or
refused with the reason."""

from __future__ import annotations

from hls.tokens import KeyRing, sign
from tests.private.support import KEYS

from edge.access import PrivateAccess, Refusal, check_path

RING = KeyRing.parse(KEYS)
NOW = 1_800_000_000.0
TOKEN = sign(RING, "hush", int(NOW) + 600)
FORGED = TOKEN[:-1] + ("B" if TOKEN[-1] == "A" else "A")


def test_a_valid_token_is_stripped_and_the_query_kept() -> None:
    raw = f"/private/{TOKEN}/hush/aac96/live.m3u8?_HLS_msn=5&x=1"
    assert check_path(raw, RING, NOW) == "/private/hush/aac96/live.m3u8?_HLS_msn=5&x=1"


def test_every_bad_token_is_refused_with_its_reason() -> None:
    cases = {
        f"/private/{FORGED}/hush/master.m3u8": "signature",
        f"/private/{TOKEN}/other-room/master.m3u8": "signature",
        f"/private/{sign(RING, 'hush', int(NOW) - 600)}/hush/master.m3u8": "expired",
        f"/private/zz{TOKEN[2:]}/hush/master.m3u8": "unknown_key",
        "/private/k1.1.abc/hush/master.m3u8": "malformed",
        "/private/hush/master.m3u8": "no_token",
        "/private/": "no_token",
    }
    for raw, reason in cases.items():
        outcome = check_path(raw, RING, NOW)
        assert isinstance(outcome, Refusal) and outcome.reason == reason, (raw, outcome)


def test_a_shield_trusts_tokenless_paths_only_when_told() -> None:
    assert isinstance(check_path("/private/hush/master.m3u8", RING, NOW), Refusal)
    assert check_path("/private/hush/master.m3u8", RING, NOW, trust_tokenless=True) == (
        "/private/hush/master.m3u8")
    assert isinstance(check_path("/private/Not_A_Room/x", RING, NOW, trust_tokenless=True),
                      Refusal)


def test_listeners_with_different_tokens_share_one_cache_key() -> None:
    access = PrivateAccess(RING)
    other = sign(RING, "hush", int(NOW) + 900)
    a = access.resolve(f"/private/{TOKEN}/hush/aac96/live.m3u8?_HLS_part=1&_HLS_msn=3".encode(),
                       NOW)
    b = access.resolve(f"/private/{other}/hush/aac96/live.m3u8?_HLS_msn=3&_HLS_part=1".encode(),
                       NOW)
    assert a == b
    assert a.key == "/private/hush/aac96/live.m3u8?_HLS_msn=3&_HLS_part=1"  # type: ignore[union-attr]
    assert (a.kind, a.room) == ("blocking_playlist", "hush")  # type: ignore[union-attr]


def test_refusals_are_403_short_lived_and_counted() -> None:
    access = PrivateAccess(RING)
    entry = access.resolve(b"/private/hush/master.m3u8", NOW)
    assert entry.status == 403  # type: ignore[union-attr]
    assert b"Cache-Control: max-age=1" in entry.fields  # type: ignore[union-attr]
    assert access.resolve(f"/private/{TOKEN}/hush/state.json".encode(), NOW).status == 404  # type: ignore[union-attr]
    assert access.resolve(f"/private/{TOKEN}/hush/../x.m4s".encode(), NOW).status == 400  # type: ignore[union-attr]
    assert access.refused == {"no_token": 1} and access.granted == 0
