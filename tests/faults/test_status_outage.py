"""The rooms database goes away while a room is on air: its status object still answers from the
node's memory, the directory serves the last list it read, the owner's audience writes fail
quietly with the room still on air, and the newest figures are written once the database is
back."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from ingest.metrics import IngestMetrics
from ingest.presence import PresenceWriter
from ingest.rooms import Rooms
from packager.audience import AudienceBoard
from packager.roomlist import RoomList
from packager.status import StatusDesk, StatusUnavailable
from registry import Registry
from tests.ingest.twins import RecordingPackager
from tests.support.postgres import PostgresServer


async def test_status_and_directory_outlive_a_database_outage(
        own_postgres: PostgresServer) -> None:
    registry = await Registry.open(own_postgres.create_database("status"),
                                   connect_timeout=1.0, command_timeout=2.0)
    packager = RecordingPackager()
    rooms = Rooms(packager, registry, IngestMetrics())
    board = AudienceBoard()
    desk = StatusDesk(registry, board)
    desk.attach(rooms)
    directory = RoomList(registry, ttl=0.1)
    writer = PresenceWriter(rooms, registry, board)
    try:
        room, _ = await rooms.create("on-air", title="Still on")
        rooms.join(room, "local", "test", name="Ada")
        await rooms.ledger.flush(10)
        board.report("on-air", "edge-1", 5, time.time())
        assert await writer.write_once() == 1
        assert await writer.write_once() == 0, "nothing changed: nothing written"
        [listed] = json.loads(await directory.document())["live"]
        assert (listed["title"], listed["speakers"], listed["audience"]) == (
            "Still on", ["Ada"], 5)

        own_postgres.stop()
        board.report("on-air", "edge-1", 9, time.time())
        samples = packager.broadcasts[-1].samples
        assert await writer.write_once() == 0, "the write failed, quietly"
        await asyncio.sleep(0.2)
        stale = json.loads(await directory.document())
        assert stale["live"][0]["audience"] == 5, "the last directory read is served"
        status = json.loads(await desk.status("on-air") or b"")
        assert (status["state"], status["audience"], status["speakers"][0]["name"]) == (
            "live", 9, "Ada")
        with pytest.raises(StatusUnavailable):
            await desk.status("elsewhere")  # only the database could say
        await asyncio.sleep(0.5)
        assert packager.broadcasts[-1].samples > samples, "the room stayed on air"

        own_postgres.start()
        assert await writer.write_once() == 1, "the newest figures, once it is back"
        rec = await registry.get_room("on-air")
        assert rec is not None and (rec.audience, rec.speaker_names) == (9, ("Ada",))
    finally:
        await rooms.close()
        await registry.close()
