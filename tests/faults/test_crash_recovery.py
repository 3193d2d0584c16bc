"""Crash drills: the ingest/origin process is killed with SIGKILL mid-broadcast and started
again on the same data (and database); listeners that kept their players open hear the room
again on the same URLs, the speaker's key still works, and the recording covers everything.

Figures (restart → audio, the gap listeners heard, the recording against the audio broadcast)
are printed for the record; the assertions are about behaviour, with generous bounds."""

from __future__ import annotations

import re
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import m3u8
import pytest

from tests.conftest import S3Server
from tests.faults.drill import (
    PLAIN_HLS,
    ROOM,
    FfmpegListener,
    Listeners,
    Speaker,
    Stack,
    playlist_position,
)
from tests.ingest.support import recent_audio, tone_db
from tests.support.browser import chromium
from tests.support.postgres import PostgresServer
from tests.support.procs import wait_http
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _open_listeners(browser: Any, stack: Stack) -> Listeners:
    wait_http(f"{stack.edge_url}/live/{ROOM}/master.m3u8", 30)
    listen = browser.new_page()
    listen.goto(f"{stack.edge_url}/listen/{ROOM}")
    plain = browser.new_page()
    plain.route(f"{stack.edge_url}/plain", lambda route: route.fulfill(
        body=PLAIN_HLS.replace("ROOM", ROOM), content_type="text/html"))
    plain.goto(f"{stack.edge_url}/plain")
    return Listeners({"listen": listen, "hls.js": plain})


def _as_a_part_is_listed(base: str) -> tuple[str, int]:
    """(text, last media sequence number) of the AAC playlist, answered to a blocking request
    for the part it hints next: the moment a new part is listed, its upload to the store
    barely begun. A kill then catches it on its way (the write-ahead journal keeps it)."""
    text, _ = playlist_position(base)
    hint = re.search(r'PRELOAD-HINT:TYPE=PART,URI="[^"]*p(\d+)\.(\d+)\.m4s"', text)
    assert hint, text
    text = httpx.get(f"{base}/live/{ROOM}/aac96/live.m3u8", timeout=10,
                     params={"_HLS_msn": hint[1], "_HLS_part": hint[2]}).text
    seq = int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", text)[1])  # type: ignore[index]
    return text, seq + len([ln for ln in text.splitlines() if ln and ln[0] != "#"]) - 1


def _journal_recovered(log: str) -> int:
    """Objects the restarted process found in the dead one's write-ahead journal."""
    m = re.search(r"(\d+) objects in the journal of a run that ended", log)
    return int(m[1]) if m else 0


def _published_end(text: str) -> float:
    """Wall-clock end of the newest part a live media playlist lists (PDT + durations)."""
    pdts = [(m.start(), datetime.fromisoformat(m[1]).timestamp())
            for m in re.finditer(r"#EXT-X-PROGRAM-DATE-TIME:(\S+)", text)]
    at, start = pdts[-1]
    tail = text[at:].split("#EXT-X-PRELOAD-HINT")[0]
    parts = re.findall(r"#EXT-X-PART:DURATION=([\d.]+)", tail)
    whole = re.findall(r"#EXTINF:([\d.]+),", tail)
    return start + (sum(map(float, whole)) if whole else sum(map(float, parts)))


def _crash_drill(tmp_path: Path, env: dict[str, str],
                 store_link: TcpProxy | None = None) -> dict[str, Any]:
    """`store_link`: the process's link to its store, black-holed for a second before the
    kill (a store that lags), so that the parts listed in that second are on their way to
    it, not in it, when the process dies; healed before the restart."""
    stack = Stack(tmp_path, env)
    speaker: Speaker | None = None
    figures: dict[str, Any] = {}
    try:
        stack.start_ingest()
        stack.start_edge()
        speaker = Speaker(stack.create_room(), tmp_path / "speaker.log")
        speaker.start()
        deadline = time.monotonic() + 30
        while not stack.room()["speakers"]:
            assert time.monotonic() < deadline, "the speaker never joined"
            time.sleep(0.2)
        with chromium() as browser, FfmpegListener(stack.edge_url, tmp_path) as classic:
            listeners = _open_listeners(browser, stack)
            listeners.wait_playing(45, advance=3.0)
            level_url = listeners.pages["hls.js"].evaluate("window.h.levels[window.h.currentLevel].url")
            master_before = httpx.get(f"{stack.edge_url}/live/{ROOM}/master.m3u8").text
            listeners.watch(2.0)
            key_before = stack.room()
            if store_link is not None:
                store_link.cut("blackhole")
                time.sleep(1.0)
            asked_at = time.monotonic()  # the playlist is made between this and the answer
            before_text, msn_before = _as_a_part_is_listed(stack.origin)
            heard_before = _published_end(before_text)

            killed_at = time.monotonic()
            stack.kill(stack.ingest)
            listeners.watch(2.0)
            if store_link is not None:
                store_link.heal()
            restarted = time.monotonic()
            up_at = stack.start_ingest()
            classic_at_restart = classic.seconds()

            # Live again on its own within 5 s of the process being up.
            deadline = up_at + 5.0
            while True:
                room = stack.room()
                if room["live"] and room["epoch"] == key_before["epoch"] + 1:
                    break
                assert time.monotonic() < deadline, room
                time.sleep(0.1)
            live_at = time.monotonic()
            # The new epoch's first segment follows a discontinuity. Looked for at once: the
            # playlist's window (a few segments) may have slid past it by the time every
            # listener has played on, on a slow machine.
            deadline = time.monotonic() + 10
            while "#EXT-X-DISCONTINUITY" not in (after_text := playlist_position(stack.origin)[0]):
                assert time.monotonic() < deadline, after_text
                time.sleep(0.2)
            moved = listeners.wait_playing(45, advance=3.0)
            listeners.watch(3.0)

            after_text, msn_after = playlist_position(stack.origin)
            assert msn_after > msn_before, "the media sequence went on past the crash"
            assert httpx.get(f"{stack.edge_url}/live/{ROOM}/master.m3u8").text == master_before
            assert listeners.pages["hls.js"].evaluate(
                "window.h.levels[window.h.currentLevel].url") == level_url, "same playlist URL"
            assert listeners.pages["hls.js"].evaluate("window.fatal") is None
            state = listeners.state("listen")
            assert state == "playing", state

            # The speaker reconnected with the same key and is heard.
            deadline = time.monotonic() + 30
            while not stack.room()["speakers"]:
                assert time.monotonic() < deadline, "the speaker's key no longer works"
                time.sleep(0.2)
            time.sleep(4.5)
            assert tone_db(recent_audio(stack.origin, ROOM), 440) > -10
            # ffmpeg as an HLS client (whole segments, no LL tags) carried on by itself too.
            assert classic.alive(), "ffmpeg gave up on the room"
            classic_after = classic.seconds() - classic_at_restart
            assert classic_after >= 3.0, classic_after
            figures.update({
                "restart_to_live_s": round(live_at - up_at, 2),
                "process_start_s": round(up_at - restarted, 2),
                "restart_to_audio_s": {n: round(t - up_at, 2) for n, t in moved.items()},
                "gap_heard_s": {n: round(listeners.longest_stall(n, killed_at - 1), 2)
                                for n in listeners.pages},
                "msn_before_after": (msn_before, msn_after),
                # Parts the kill caught on their way to the store, uploaded from the journal.
                "from_the_journal": _journal_recovered(stack.ingest.output() if stack.ingest
                                                       else ""),
                "speaker_connects": speaker.connects,
                "ffmpeg_audio_after_restart_s": round(classic_after, 1),
            })
        speaker.stop()
        speaker = None
        stack.end_room()
        figures.update(_check_recording(stack, tmp_path, heard_before, killed_at - asked_at))
        return figures
    finally:
        if speaker is not None:
            speaker.stop()
        stack.stop()


def _check_recording(stack: Stack, tmp_path: Path, heard_until: float,
                     asked_to_kill: float) -> dict[str, Any]:
    room = stack.room()
    bid = room["broadcast_id"]
    url = f"{stack.origin}/live/{ROOM}/{bid}/aac96/recording.m3u8"
    deadline = time.monotonic() + 20
    while "#EXT-X-ENDLIST" not in (text := httpx.get(url, timeout=10).text):
        assert time.monotonic() < deadline, text[-500:]
        time.sleep(0.5)
    pl = m3u8.loads(text)
    epochs: list[float] = [0.0]
    first_end = 0.0
    for seg in pl.segments:
        if seg.discontinuity:
            epochs.append(0.0)
        epochs[-1] += seg.duration
        if len(epochs) == 1:
            first_end = seg.current_program_date_time.timestamp() + seg.duration
    assert len(epochs) == 2, "one discontinuity: the crash"
    # The first epoch runs up to what listeners could hear of it, give or take one part
    # (the playlist was read a moment before the kill; parts cut since are kept too, and on
    # a busy machine that moment can be a few parts long).
    assert -0.05 <= first_end - heard_until <= 0.5 + asked_to_kill, (first_end, heard_until,
                                                                      asked_to_kill)
    out = tmp_path / "recording.wav"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", url, "-y", str(out)],
                   check=True, timeout=120)
    decoded = float(subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
         str(out)], capture_output=True, text=True, check=True).stdout)
    listed = sum(epochs)
    assert abs(decoded - listed) <= 0.25, (decoded, listed)
    return {"recording_s": round(listed, 2), "decoded_s": round(decoded, 2),
            "first_epoch_s": round(epochs[0], 2),
            "first_epoch_end_vs_heard_s": round(first_end - heard_until, 3)}


def test_a_killed_ingest_resumes_its_rooms_for_listeners_who_never_reloaded(
        tmp_path: Path) -> None:
    figures = _crash_drill(tmp_path, {})
    print("crash drill (SQLite, local store):", figures)


def test_the_crash_drill_with_postgresql_and_s3(
        tmp_path: Path, own_postgres: PostgresServer, s3_server: S3Server) -> None:
    with TcpProxy("127.0.0.1", s3_server.port) as link:
        env = {**s3_server.env(), "TOWNSQUARE_S3_PREFIX": f"drill-{time.time_ns()}",
               "TOWNSQUARE_S3_ENDPOINT_URL": f"http://{link.address}",
               "TOWNSQUARE_DATABASE_URL": own_postgres.create_database("drill")}
        figures = _crash_drill(tmp_path, env, link)
    # The parts listed while the store lagged were in the journal, and are in the recording.
    assert figures["from_the_journal"] > 0, figures
    print("crash drill (PostgreSQL, S3 lagging at the kill):", figures)


def test_the_listener_page_recovers_when_everything_was_killed(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    speaker: Speaker | None = None
    try:
        stack.start_ingest()
        stack.start_edge()
        speaker = Speaker(stack.create_room(), tmp_path / "speaker.log")
        speaker.start()
        with chromium() as browser:
            wait_http(f"{stack.edge_url}/live/{ROOM}/master.m3u8", 30)
            page = browser.new_page()
            page.goto(f"{stack.edge_url}/listen/{ROOM}")
            listeners = Listeners({"listen": page})
            listeners.wait_playing(45, advance=3.0)
            stack.kill(stack.edge)
            stack.kill(stack.ingest)
            # Once the buffered audio has played out, the page says so: never "playing" over
            # silence.
            assert listeners.state("listen", want="reconnecting", timeout=10) == "reconnecting"
            up_at = stack.start_ingest()
            stack.start_edge()
            moved = listeners.wait_playing(60, advance=3.0)
            assert listeners.state("listen") == "playing"
            print("everything killed: page back to audio",
                  round(moved["listen"] - up_at, 2), "s after ingest was up")
    finally:
        if speaker is not None:
            speaker.stop()
        stack.stop()
