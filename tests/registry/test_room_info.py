"""Room metadata and presence: a title and a description set and read back, the audience and
speaker names the owner writes, and the directory's one read of public rooms."""

from __future__ import annotations

import pytest

from registry import NoSuchRoom, Presence, Registry

HASH = "a" * 64


async def test_title_and_description_are_kept_and_changed(registry: Registry) -> None:
    made = await registry.create_room("talk", HASH, 1.0, title="Town hall",
                                      description="Questions for the mayor.\nBring yours.")
    assert (made.title, made.description) == ("Town hall", "Questions for the mayor.\nBring yours.")
    retitled = await registry.set_room_info("talk", title="Town hall, part 2")
    assert (retitled.title, retitled.description) == (
        "Town hall, part 2", "Questions for the mayor.\nBring yours.")
    cleared = await registry.set_room_info("talk", description="")
    assert (cleared.title, cleared.description) == ("Town hall, part 2", "")
    assert await registry.get_room("talk") == cleared
    with pytest.raises(NoSuchRoom):
        await registry.set_room_info("nobody", title="x")


async def test_presence_is_written_for_live_rooms_held_by_the_writer(registry: Registry) -> None:
    for name in ("held", "elsewhere", "waiting"):
        await registry.create_room(name, HASH, 1.0)
    for name in ("held", "elsewhere"):
        await registry.take_room(name, "n1" if name == "held" else "n2", ttl=60.0,
                                 go_live=f"b-{name}")
    seen = {name: Presence(12, ("Ada", "Grace")) for name in ("held", "elsewhere", "waiting")}
    await registry.record_presence(seen, node="n1")
    rooms = {r.name: r for r in await registry.list_rooms()}
    assert (rooms["held"].audience, rooms["held"].speaker_names) == (12, ("Ada", "Grace"))
    assert (rooms["elsewhere"].audience, rooms["elsewhere"].speaker_names) == (0, ())
    assert (rooms["waiting"].audience, rooms["waiting"].speaker_names) == (0, ())
    await registry.record_presence({"held": Presence(3, ())}, node="n1")
    again = await registry.get_room("held")
    assert again is not None and (again.audience, again.speaker_names) == (3, ())


async def test_public_rooms_lists_live_ones_and_replays_newest_first(registry: Registry) -> None:
    await registry.create_room("secret", HASH, 1.0, private=True)
    await registry.go_live("secret", "b-secret", 2.0)
    await registry.create_room("later", HASH, 1.0, title="Later")
    await registry.go_live("later", "b-later", 5.0)
    await registry.create_room("first", HASH, 1.0, title="First")
    await registry.go_live("first", "b-first", 3.0)
    await registry.create_room("idle", HASH, 1.0)  # waiting: neither live nor a replay
    await registry.create_room("never", HASH, 1.0)
    await registry.end_room("never", 2.0, "requested")  # never on air: no recording
    for i in range(4):
        await registry.create_room(f"old-{i}", HASH, 1.0)
        await registry.go_live(f"old-{i}", f"b-old-{i}", 2.0)
        await registry.end_room(f"old-{i}", 10.0 + i, "requested")
    await registry.create_room("old-secret", HASH, 1.0, private=True)
    await registry.go_live("old-secret", "b-os", 2.0)
    await registry.end_room("old-secret", 20.0, "requested")

    listing = await registry.public_rooms(replays=3)

    assert [r.name for r in listing.live] == ["first", "later"]
    assert [r.name for r in listing.replays] == ["old-3", "old-2", "old-1"]
    assert listing.replays[0].broadcast_id == "b-old-3"


async def test_a_name_created_again_starts_with_its_own_title_and_no_presence(
        registry: Registry) -> None:
    await registry.create_room("r", HASH, 1.0, title="Before")
    await registry.go_live("r", "b1", 2.0)
    await registry.record_presence({"r": Presence(40, ("Ada",))})
    await registry.end_room("r", 3.0, "requested")
    again = await registry.create_room("r", HASH, 4.0, title="After")
    assert (again.title, again.description, again.audience, again.speaker_names) == (
        "After", "", 0, ())
