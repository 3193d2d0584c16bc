"""`ingest.service.run` in-process: start-up checks, serving, and a clean stop."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from ingest.errors import ConfigError
from ingest.service import check_settings, load_hold_audio, run
from ingest.settings import IngestSettings
from registry import Registry, default_url
from tests.ingest.twins import RecordingPackager
from tests.support.procs import free_port

TOKEN = "service-test-token-0123456789"


def settings(tmp: Path, **kw: object) -> IngestSettings:
    base: dict[str, object] = {"host": "127.0.0.1", "control_port": free_port(),
                               "rtmp_port": free_port(), "data_dir": tmp, "admin_token": TOKEN}
    return IngestSettings(**{**base, **kw})  # type: ignore[arg-type]


def test_start_up_checks_name_the_rule(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TOWNSQUARE_ADMIN_TOKEN"):
        check_settings(settings(tmp_path, admin_token=None))
    with pytest.raises(ConfigError, match="at least 16"):
        check_settings(settings(tmp_path, admin_token="short"))
    with pytest.raises(ConfigError, match="at least 10"):
        check_settings(settings(tmp_path, max_speakers_per_room=3))


def test_hold_audio_loads_a_file_and_names_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "hold.wav"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=44_100, layout="mono")
        t = np.arange(44_100) / 44_100
        x = (0.2 * np.sin(2 * np.pi * 330 * t) * 32767).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(x, format="s16", layout="mono")
        frame.sample_rate = 44_100
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    pcm = load_hold_audio(str(path), 120)
    assert pcm is not None and pcm.shape[0] == 2 and abs(pcm.shape[1] - 48_000) < 2000
    assert load_hold_audio(None, 120) is None
    with pytest.raises(ConfigError, match="TOWNSQUARE_HOLD_AUDIO"):
        load_hold_audio(str(tmp_path / "missing.mp3"), 120)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")
async def test_run_serves_until_cancelled_and_leaves_live_rooms_to_resume(
        tmp_path: Path) -> None:
    s = settings(tmp_path)
    packager = RecordingPackager()
    started = asyncio.Event()
    task = asyncio.create_task(run(s, packager, started))
    await asyncio.wait_for(started.wait(), 10)
    base = f"http://127.0.0.1:{s.control_port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=base, headers=auth) as http:
        assert (await http.get("/healthz")).json()["rtmp_port"] == s.rtmp_port
        assert "townsquare_ingest_rooms_created_total" in (await http.get("/metrics")).text
        page = await http.get("/broadcast/nope")
        assert page.status_code == 404
        room = (await http.post("/rooms", json={"name": "live-one"})).json()
        html = await http.get("/broadcast/live-one")
        assert html.status_code == 200 and 'id="key"' in html.text
        publisher = await asyncio.create_subprocess_exec(
            "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi",
            "-i", "sine", "-t", "30", "-c:a", "aac", "-f", "flv", room["rtmp_publish_url"])
        for _ in range(100):
            state = (await http.get("/rooms/live-one")).json()
            if state["speakers"]:
                break
            await asyncio.sleep(0.1)
        assert state["live"] and state["speakers"][0]["kind"] == "rtmp"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Stopping the service stopped the live room without ending it: its epoch closed, the
    # publisher cut off, and the registry still has it live for the next start to resume.
    assert packager.broadcasts[0].closed and not packager.broadcasts[0].ended
    registry = await Registry.open(default_url(s.data_dir))
    try:
        rec = await registry.get_room("live-one")
        assert rec is not None and rec.state == "live" and rec.epoch == 1
    finally:
        await registry.close()
    assert await asyncio.wait_for(publisher.wait(), 10) is not None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.control_port), timeout=1).close()


async def test_a_busy_port_is_a_config_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match="RTMP"):
            await run(settings(tmp_path, rtmp_port=port), RecordingPackager())
