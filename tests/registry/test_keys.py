"""Private rooms and stream keys replaced or revoked, on both backends."""

from __future__ import annotations

import asyncio

import pytest

from registry import REVOKED_KEY_HASH, NoSuchRoom, Registry, RoomClosed

HASH_A = "a" * 64
HASH_B = "b" * 64


async def test_rooms_are_public_on_their_first_key_unless_made_private(
        registry: Registry) -> None:
    public = await registry.create_room("open", HASH_A, 1.0)
    private = await registry.create_room("closed", HASH_B, 1.0, private=True)
    assert (public.private, public.key_generation) == (False, 1)
    assert (private.private, private.key_generation) == (True, 1)
    assert await registry.private_rooms(["open", "closed", "ghost"]) == {
        "open": False, "closed": True}


async def test_rotating_moves_the_generation_and_the_old_key_finds_nothing(
        registry: Registry) -> None:
    await registry.create_room("r", HASH_A, 1.0)
    rotated = await registry.replace_key("r", HASH_B)
    assert (rotated.key_hash, rotated.key_generation) == (HASH_B, 2)
    assert await registry.room_by_key(HASH_A) is None
    assert (await registry.room_by_key(HASH_B)) == rotated


async def test_revoking_leaves_no_key_that_works(registry: Registry) -> None:
    await registry.create_room("r", HASH_A, 1.0)
    revoked = await registry.replace_key("r", REVOKED_KEY_HASH)
    assert revoked.key_revoked and revoked.key_generation == 2
    assert await registry.room_by_key(HASH_A) is None


async def test_concurrent_rotations_each_get_their_own_generation(registry: Registry) -> None:
    await registry.create_room("r", HASH_A, 1.0)
    done = await asyncio.gather(*(registry.replace_key("r", f"{i:064d}") for i in range(4)))
    assert sorted(r.key_generation for r in done) == [2, 3, 4, 5]
    final = await registry.get_room("r")
    assert final is not None and final.key_generation == 5
    assert final.key_hash == next(r.key_hash for r in done if r.key_generation == 5)


async def test_keys_of_unknown_or_ended_rooms_do_not_change(registry: Registry) -> None:
    with pytest.raises(NoSuchRoom):
        await registry.replace_key("ghost", HASH_A)
    await registry.create_room("r", HASH_A, 1.0)
    await registry.end_room("r", 2.0, "done")
    with pytest.raises(RoomClosed):
        await registry.replace_key("r", HASH_B)


async def test_a_reused_name_gets_a_new_generation_and_its_new_privacy(
        registry: Registry) -> None:
    await registry.create_room("r", HASH_A, 1.0, private=True)
    await registry.end_room("r", 2.0, "done")
    again = await registry.create_room("r", HASH_B, 3.0)
    assert (again.private, again.key_generation) == (False, 2)
