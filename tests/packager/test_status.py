"""Status objects and the directory of rooms: composed as the contract says, at most once per
room per second however many ask, and answered by the tier from the rooms database for rooms
nobody publishes (a real tier on a real socket, SQLite behind it)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from prometheus_client import REGISTRY

from packager.roomlist import RoomList
from packager.status import RoomFacts, SpeakerFacts, StatusDesk, compose, render
from registry import Presence, Registry, default_url
from tests.packager.test_tier import serving_tier

HASH = "0" * 64
BROADCAST = "b20260101T000000Z-abcdef"


class Feed:
    """The rooms of a node as the desk sees them, counting how often it is asked."""

    def __init__(self, facts: RoomFacts) -> None:
        self.facts = facts
        self.asked = 0

    def room_facts(self, room: str) -> RoomFacts | None:
        self.asked += 1
        return self.facts if room == self.facts.room else None


def reads() -> float:
    return REGISTRY.get_sample_value("townsquare_room_list_reads_total", {"outcome": "ok"}) or 0.0


class Board:
    def total(self, room: str, now: float) -> int:
        return 7


FACTS = RoomFacts("demo", "Demo room", "About it", "live", 1000.0, None,
                  (SpeakerFacts("rtmp-1", "Ada", True, False),
                   SpeakerFacts("whip-2", "Grace", False, True)),
                  f"/live/demo/{BROADCAST}/recording.m3u8")


def test_the_status_object_has_the_contracts_fields() -> None:
    doc = json.loads(render(compose(FACTS, 123, 1003.25)))
    assert doc == {
        "room": "demo", "title": "Demo room", "description": "About it", "state": "live",
        "since": 1000.0, "ended_at": None,
        "speakers": [{"id": "rtmp-1", "name": "Ada", "speaking": True, "muted": False},
                     {"id": "whip-2", "name": "Grace", "speaking": False, "muted": True}],
        "audience": 123, "recording": f"/live/demo/{BROADCAST}/recording.m3u8",
        "updated": 1003.25,
    }
    assert "Ünïcode".encode() in render(compose(
        RoomFacts("r", "Ünïcode", "", "waiting", None, None, (), None), 0, 1.0))


async def test_a_room_is_composed_once_per_second_however_many_ask() -> None:
    feed = Feed(FACTS)
    desk = StatusDesk(audience=Board())
    desk.attach(feed)
    first = await asyncio.gather(*(desk.status("demo", now=500.1 + i / 1000) for i in range(200)))
    assert feed.asked == 1 and len(set(first)) == 1
    assert json.loads(first[0] or b"")["audience"] == 7
    later = await desk.status("demo", now=500.99)
    assert later == first[0] and feed.asked == 1
    assert await desk.status("demo", now=501.0) != first[0] and feed.asked == 2
    # An unknown room is remembered for the second as well, and answers None (404).
    assert await desk.status("nobody", now=501.2) is None
    assert await desk.status("nobody", now=501.3) is None
    assert feed.asked == 3




async def test_the_tier_answers_rooms_nobody_publishes_from_the_database(
        tmp_path: Path) -> None:
    registry = await Registry.open(default_url(tmp_path))
    try:
        await registry.create_room("soon", HASH, 1.0, title="Starts at nine")
        await registry.create_room("done", HASH, 1.0, title="Yesterday")
        await registry.go_live("done", BROADCAST, 2.0)
        await registry.end_room("done", 9.0, "requested")
        await registry.create_room("secret", HASH, 1.0, private=True, title="Hush")
        await registry.go_live("secret", BROADCAST, 2.0)
        await registry.end_room("secret", 9.5, "requested")
        # Live, its owner gone (waiting for another node to adopt it): the owner's last words.
        await registry.create_room("orphan", HASH, 1.0, title="Carrying on")
        await registry.go_live("orphan", BROADCAST, 3.0)
        await registry.record_presence({"orphan": Presence(42, ("Ada",))})
        async with serving_tier(tmp_path / "data", registry) as base, httpx.AsyncClient(
                base_url=base) as client:
            soon = await client.get("/live/soon/status.json")
            assert soon.status_code == 200, soon.text
            assert soon.headers["cache-control"] == "public, max-age=1"
            assert {k: soon.json()[k] for k in ("title", "state", "since", "speakers",
                                                "recording")} == {
                "title": "Starts at nine", "state": "waiting", "since": None, "speakers": [],
                "recording": None}
            done = (await client.get("/live/done/status.json")).json()
            assert (done["state"], done["since"], done["ended_at"], done["recording"]) == (
                "ended", 2.0, 9.0, f"/live/done/{BROADCAST}/recording.m3u8")
            orphan = (await client.get("/live/orphan/status.json")).json()
            assert (orphan["state"], orphan["audience"]) == ("live", 42)
            assert (await client.get("/live/nobody/status.json")).status_code == 404
            assert (await client.get("/live/secret/status.json")).status_code == 404
            assert (await client.get("/private/secret/status.json")).json()["title"] == "Hush"

            listing = await client.get("/live/rooms.json")
            assert listing.headers["cache-control"] == "public, max-age=2"
            doc = listing.json()
            assert doc["live"] == [{"room": "orphan", "title": "Carrying on",
                                    "speakers": ["Ada"], "audience": 42, "since": 3.0}]
            assert doc["replays"] == [{"room": "done", "title": "Yesterday", "started_at": 2.0,
                                       "ended_at": 9.0,
                                       "recording": f"/live/done/{BROADCAST}/recording.m3u8"}]
            assert (await client.get("/private/rooms.json")).status_code == 404
    finally:
        await registry.close()


async def test_the_directory_is_read_once_per_lifetime_however_many_ask(tmp_path: Path) -> None:
    registry = await Registry.open(default_url(tmp_path))
    try:
        await registry.create_room("on", HASH, 1.0, title="On air")
        await registry.go_live("on", BROADCAST, 2.0)
        rooms = RoomList(registry, ttl=60.0)
        before = reads()
        answers = await asyncio.gather(*(rooms.document() for _ in range(200)))
        assert reads() - before == 1
        assert len(set(answers)) == 1 and b"On air" in answers[0]
        # Without a registry: the empty directory, read from nowhere.
        empty = json.loads(await RoomList(None).document())
        assert (empty["live"], empty["replays"]) == ([], []) and empty["updated"] > 0
    finally:
        await registry.close()
