"""The database goes away while a room is on air: the room plays on, the control API says
clearly why it cannot create rooms, and what happened meanwhile is written once it is back."""

from __future__ import annotations

import asyncio
import time

import httpx

from ingest.api import PublicUrls, build_app
from ingest.metrics import IngestMetrics
from ingest.rooms import Rooms
from ingest.whip import WhipEndpoint
from registry import Registry
from tests.ingest.twins import RecordingPackager
from tests.support.postgres import PostgresServer

TOKEN = "db-outage-admin-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_rooms_on_air_outlive_a_database_outage(own_postgres: PostgresServer) -> None:
    url = own_postgres.create_database("outage")
    registry = await Registry.open(url, connect_timeout=1.0, command_timeout=2.0)
    packager = RecordingPackager()
    rooms = Rooms(packager, registry, IngestMetrics())
    whip = WhipEndpoint(rooms, rooms.metrics)
    app = build_app(rooms, whip, rooms.metrics, TOKEN,
                    PublicUrls("http://c", "rtmp://r", "http://e", "http://o"))
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c")
    try:
        created = await http.post("/rooms", json={"name": "on-air"}, headers=AUTH)
        assert created.status_code == 201
        room = rooms.get("on-air")
        rooms.join(room, "local", "test")
        await rooms.ledger.flush(10)
        broadcast = packager.broadcasts[-1]

        own_postgres.stop()
        before = broadcast.samples
        t0 = time.monotonic()
        refused = await http.post("/rooms", json={"name": "another"}, headers=AUTH)
        assert refused.status_code == 503, refused.text
        assert "rooms cannot be created now" in refused.json()["detail"]
        assert time.monotonic() - t0 < 10, "the refusal is prompt"
        rooms._advanced(room, room.epoch, 40)  # progress made while the database is away
        await asyncio.sleep(2.0)
        assert broadcast.samples - before >= 48_000, "the room kept its program clock running"
        assert rooms.check_key("on-air", created.json()["stream_key"]) is room
        health = rooms.ledger.last_error
        assert health is not None and rooms.ledger.pending >= 1

        own_postgres.start()
        assert await rooms.ledger.flush(20), "the backlog reaches the database once it is back"
        rec = await registry.get_room("on-air")
        assert rec is not None and rec.state == "live" and rec.next_msn == 40
        assert rooms.ledger.last_error is None
    finally:
        await whip.close()
        await rooms.close()
        await http.aclose()
        await registry.close()
