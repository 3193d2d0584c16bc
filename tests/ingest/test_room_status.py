"""Room metadata and status against a real `townsquare ingest` (control API, origin, RTMP) with a
real ffmpeg publisher: titles and names set and refused, the status object showing who speaks
(and who does not once muted), the directory listing live public rooms and then the replay,
and a flood of requests costing one composition or database read per second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.ingest.support import Ingest, ffmpeg_publish, ingest_service
from tests.ingest.twins import ToneTrack, whip_answer, whip_offer


@pytest.fixture(scope="module")
def ingest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingest]:
    tmp = tmp_path_factory.mktemp("status")
    with ingest_service(tmp, env={"TOWNSQUARE_PRESENCE_SECONDS": "0.5"}) as svc:
        yield svc


def until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def counter(base: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_title_description_and_names_are_checked_with_clear_errors(ingest: Ingest) -> None:
    with ingest.api() as api:
        made = api.post("/rooms", json={"name": "checked", "title": "  Town hall  ",
                                        "description": "Line one\nLine two"})
        assert made.status_code == 201, made.text
        assert (made.json()["title"], made.json()["description"]) == (
            "Town hall", "Line one\nLine two")
        for body, field in (({"title": "x" * 121}, "title"),
                            ({"title": "bell\x07"}, "title"),
                            ({"description": "y" * 1001}, "description"),
                            ({"description": "nul\x00"}, "description")):
            r = api.patch("/rooms/checked", json=body)
            assert r.status_code == 422, (body, r.text)
            [error] = r.json()["detail"]
            assert error["loc"] == ["body", field], error
            assert "at most" in error["msg"] or "printable" in error["msg"], error
        edited = api.patch("/rooms/checked", json={"title": "Town hall, live"})
        assert edited.status_code == 200, edited.text
        assert (edited.json()["title"], edited.json()["description"]) == (
            "Town hall, live", "Line one\nLine two")
        assert api.get("/rooms/checked").json()["title"] == "Town hall, live"
        assert api.patch("/rooms/nope", json={"title": "x"}).status_code == 404
        assert api.put("/rooms/checked/speakers/rtmp-9/name",
                       json={"name": "z" * 61}).status_code == 422
        assert api.put("/rooms/checked/speakers/rtmp-9/name",
                       json={"name": "Ada"}).status_code == 404
    # Without the admin token nothing changes.
    r = httpx.patch(f"{ingest.control}/rooms/checked", json={"title": "hijacked"})
    assert r.status_code == 401


def test_status_shows_who_speaks_and_the_directory_lists_live_public_rooms(
        ingest: Ingest, tmp_path: Path) -> None:
    room = "status-live"
    with ingest.api() as api:
        made = api.post("/rooms", json={"name": room, "title": "Morning show",
                                        "description": "News at nine"}).json()
        secret = api.post("/rooms", json={"name": "status-secret", "private": True,
                                          "title": "Board meeting"}).json()
    status_url = f"{ingest.origin}/live/{room}/status.json"
    waiting = httpx.get(status_url)
    assert waiting.status_code == 200 and waiting.json()["state"] == "waiting"
    assert waiting.json()["speakers"] == [] and waiting.json()["since"] is None

    tone = ffmpeg_publish(ingest.rtmp_url(made["stream_key"]) + "?name=Ada", 440, 60,
                          log=tmp_path / "ffmpeg.log")
    hidden = ffmpeg_publish(ingest.rtmp_url(secret["stream_key"]), 660, 60,
                            log=tmp_path / "ffmpeg-secret.log")
    try:
        def speaking() -> dict[str, Any] | None:
            doc: dict[str, Any] = httpx.get(status_url).json()
            return doc if doc["speakers"] and doc["speakers"][0]["speaking"] else None

        doc = until(speaking, "the publisher to be heard speaking")
        assert {k: doc[k] for k in ("room", "title", "description", "state", "ended_at")} == {
            "room": room, "title": "Morning show", "description": "News at nine",
            "state": "live", "ended_at": None}
        [ada] = doc["speakers"]
        assert (ada["name"], ada["muted"], ada["id"].startswith("rtmp-")) == ("Ada", False, True)
        assert doc["since"] > 0 and doc["audience"] == 0
        assert doc["recording"].startswith(f"/live/{room}/b") and doc["recording"].endswith(
            "/recording.m3u8")
        answer = httpx.get(status_url)
        assert answer.headers["cache-control"] == "public, max-age=1"
        assert answer.headers["content-type"].startswith("application/json")
        # The broadcaster page reads the same object from the control API, without a token.
        control = httpx.get(f"{ingest.control}/rooms/{room}/status")
        assert control.status_code == 200 and control.json()["speakers"][0]["name"] == "Ada"

        with ingest.api() as api:
            muted = api.post(f"/rooms/{room}/speakers/{ada['id']}/mute", json={"muted": True})
            assert muted.status_code == 200, muted.text
            until(lambda: httpx.get(status_url).json()["speakers"][0] == {
                "id": ada["id"], "name": "Ada", "speaking": False, "muted": True},
                "the muted speaker to show silent")
            api.post(f"/rooms/{room}/speakers/{ada['id']}/mute", json={"muted": False})
            renamed = api.put(f"/rooms/{room}/speakers/{ada['id']}/name",
                              json={"name": "Ada Lovelace"})
            assert renamed.status_code == 200 and renamed.json()["name"] == "Ada Lovelace"

        def renamed_and_speaking() -> bool:
            doc = speaking()
            return doc is not None and doc["speakers"][0]["name"] == "Ada Lovelace"

        until(renamed_and_speaking, "the new name, speaking again")

        # The directory: the public room with its title and speaker, never the private one.
        def listed() -> dict[str, Any] | None:
            doc: dict[str, Any] = httpx.get(f"{ingest.origin}/live/rooms.json").json()
            mine = [r for r in doc["live"] if r["room"] == room]
            return mine[0] if mine and mine[0]["speakers"] == ["Ada Lovelace"] else None

        entry = until(listed, "the room in the directory with its speaker's new name")
        assert entry["title"] == "Morning show" and entry["since"] == doc["since"]
        directory = httpx.get(f"{ingest.origin}/live/rooms.json")
        assert directory.headers["cache-control"] == "public, max-age=2"
        assert "status-secret" not in directory.text and "Board meeting" not in directory.text
        # A private room's status is served under /private/ only, and not to anyone on the
        # control API.
        assert httpx.get(f"{ingest.origin}/live/status-secret/status.json").status_code == 404
        assert httpx.get(f"{ingest.origin}/private/status-secret/status.json").json()[
            "title"] == "Board meeting"
        assert httpx.get(f"{ingest.control}/rooms/status-secret/status").status_code == 404
        own = httpx.get(f"{ingest.control}/rooms/status-secret/status",
                        headers={"Authorization": f"Bearer {secret['stream_key']}"})
        assert own.status_code == 200 and own.json()["state"] == "live"
        assert httpx.get(f"{ingest.origin}/live/no-such-room/status.json").status_code == 404
        assert httpx.get(f"{ingest.origin}/private/rooms.json").status_code == 404
    finally:
        for proc in (tone, hidden):
            proc.terminate()
            proc.wait(10)

    with ingest.api() as api:
        assert api.post(f"/rooms/{room}/end").status_code == 200
    # Composed once a second: the end shows within one.
    ended = until(lambda: (doc := httpx.get(status_url).json())["state"] == "ended" and doc,
                  "the end in the status", timeout=3)
    assert (ended["state"], ended["speakers"], ended["recording"]) == (
        "ended", [], doc["recording"])
    assert ended["ended_at"] >= ended["since"]

    def replayed() -> dict[str, Any] | None:
        doc: dict[str, Any] = httpx.get(f"{ingest.origin}/live/rooms.json").json()
        if room in [r["room"] for r in doc["live"]]:
            return None  # the end is written to the registry off the audio path: soon
        return next((r for r in doc["replays"] if r["room"] == room), None)

    replay = until(replayed, "the ended room among the replays")
    assert replay == {"room": room, "title": "Morning show", "started_at": doc["since"],
                      "ended_at": ended["ended_at"], "recording": doc["recording"]}
    recording = httpx.get(f"{ingest.origin}{replay['recording']}")
    assert recording.status_code == 200 and "#EXTM3U" in recording.text


async def test_a_whip_speaker_is_shown_under_the_name_it_asked_for(ingest: Ingest) -> None:
    with ingest.api() as api:
        key = api.post("/rooms", json={"name": "whip-named"}).json()["stream_key"]
    offer_headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {key}"}
    pc, offer = await whip_offer(ToneTrack(880))
    try:
        async with httpx.AsyncClient(base_url=ingest.control, timeout=10) as client:
            bad = await client.post("/whip/whip-named", params={"name": "tab\there"},
                                    content=offer, headers=offer_headers)
            assert bad.status_code == 422 and "printable" in bad.text
            r = await client.post("/whip/whip-named", params={"name": "Grace Hopper"},
                                  content=offer, headers=offer_headers)
            assert r.status_code == 201, r.text
            await whip_answer(pc, r.text)
            deadline = time.monotonic() + 20
            while True:
                doc = (await client.get("/rooms/whip-named/status")).json()
                if doc["speakers"] and doc["speakers"][0]["speaking"]:
                    break
                assert time.monotonic() < deadline, doc
                await asyncio.sleep(0.1)
        assert doc["speakers"][0]["name"] == "Grace Hopper"
        assert doc["speakers"][0]["id"].startswith("whip-")
    finally:
        await pc.close()


async def test_a_flood_of_requests_costs_one_composition_or_read_per_second(
        ingest: Ingest) -> None:
    with ingest.api() as api:
        api.post("/rooms", json={"name": "flooded", "title": "Popular"})
    composed = "townsquare_status_composed_total"
    reads = "townsquare_room_list_reads_total"
    async with httpx.AsyncClient(base_url=ingest.origin, timeout=10) as client:
        before = (counter(ingest.origin, composed), counter(ingest.origin, reads))
        started = time.monotonic()
        for _ in range(2):
            answers = await asyncio.gather(
                *(client.get("/live/flooded/status.json") for _ in range(80)),
                *(client.get("/live/rooms.json") for _ in range(80)))
            assert all(a.status_code == 200 for a in answers)
        seconds = time.monotonic() - started
        after = (counter(ingest.origin, composed), counter(ingest.origin, reads))
    # 320 requests: at most one composition (and one read) per second they spanned, plus the
    # second they started in.
    assert after[0] - before[0] <= int(seconds) + 2
    assert after[1] - before[1] <= int(seconds) + 2
