"""The Debian ffmpeg CLI publishing over RTMP into a real `townsquare ingest`."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ingest.support import (
    Ingest,
    ffmpeg_publish,
    ingest_service,
    media_playlist,
    recent_audio,
    rms_dbfs,
    tone_db,
    wait_for,
)

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None,
    reason="needs the ffmpeg CLI (apt-get install ffmpeg)",
)


@pytest.fixture(scope="module")
def ingest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingest]:
    with ingest_service(tmp_path_factory.mktemp("rtmp")) as svc:
        yield svc


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_two_rooms_publish_at_once_audio_only_and_with_video(ingest: Ingest, tmp_path: Path) -> None:
    a = ingest.create_room("rtmp-audio")
    b = ingest.create_room("rtmp-obs")
    pa = ffmpeg_publish(ingest.rtmp_url(a["stream_key"]), 440, log=tmp_path / "a.log")
    pb = ffmpeg_publish(ingest.rtmp_url(b["stream_key"]), 3000, video=True,
                        log=tmp_path / "b.log")
    try:
        for room in ("rtmp-audio", "rtmp-obs"):
            wait_for(lambda r=room: ingest.room(r)["live"] and ingest.room(r)["speakers"], 15,
                     what=f"{room} live with a speaker")
        start = {r: media_playlist(ingest.origin, r).position for r in ("rtmp-audio", "rtmp-obs")}
        # Three more whole segments (≈ 6 s) in both rooms: both advance at once.
        for room in start:
            wait_for(lambda r=room: media_playlist(ingest.origin, r).position[0] >= start[r][0] + 3,
                     15, what=f"{room} playlist advancing")
        audio = recent_audio(ingest.origin, "rtmp-audio")
        obs = recent_audio(ingest.origin, "rtmp-obs")
        assert tone_db(audio, 440) > -3 and tone_db(audio, 3000) < -50
        assert tone_db(obs, 3000) > -3 and tone_db(obs, 440) < -50
        assert pa.poll() is None and pb.poll() is None, "a publisher was dropped"
        assert ingest.room("rtmp-obs")["speakers"][0]["kind"] == "rtmp"
    finally:
        _stop(pa)
        _stop(pb)


def test_wrong_key_is_refused_with_badname(ingest: Ingest, tmp_path: Path) -> None:
    log = tmp_path / "bad.log"
    proc = ffmpeg_publish(ingest.rtmp_url("tsk_not-a-key"), 500, seconds=5, log=log)
    assert proc.wait(20) != 0
    text = log.read_text()
    assert "invalid stream key" in text, text
    assert "publish refused" in ingest.service.output()
    metrics = ingest_metrics(ingest)
    assert 'townsquare_ingest_publish_refused_total{protocol="rtmp",reason="key"}' in metrics


def test_publisher_drops_and_returns_on_the_same_timeline(ingest: Ingest, tmp_path: Path) -> None:
    room = ingest.create_room("rtmp-drop")
    first = ffmpeg_publish(ingest.rtmp_url(room["stream_key"]), 1000, log=tmp_path / "1.log")
    try:
        wait_for(lambda: media_playlist(ingest.origin, "rtmp-drop").position[0] >= 2, 20,
                 what="first segments")
        before = media_playlist(ingest.origin, "rtmp-drop")
        _stop(first, signal.SIGKILL)  # an abrupt drop: no FCUnpublish, the socket just dies
        # For five seconds nobody speaks: the playlist must keep moving, part by part.
        positions = []
        t_end = time.monotonic() + 5.0
        while time.monotonic() < t_end:
            positions.append(media_playlist(ingest.origin, "rtmp-drop").position)
            time.sleep(0.5)
        assert all(b > a for a, b in zip(positions, positions[2:], strict=False)), positions
        assert wait_for(lambda: not ingest.room("rtmp-drop")["speakers"], 5)
        silent = recent_audio(ingest.origin, "rtmp-drop", segments=1)
        assert rms_dbfs(silent) < -60, "the gap should be silence"
    finally:
        _stop(first)
    second = ffmpeg_publish(ingest.rtmp_url(room["stream_key"]), 2500, log=tmp_path / "2.log")
    try:
        pos = media_playlist(ingest.origin, "rtmp-drop").position
        wait_for(lambda: media_playlist(ingest.origin, "rtmp-drop").position[0] >= pos[0] + 3, 15)
        back = recent_audio(ingest.origin, "rtmp-drop")
        assert tone_db(back, 2500) > -3 and rms_dbfs(back) > -30, "the returner is not heard"
        after = media_playlist(ingest.origin, "rtmp-drop")
        # One broadcast, one timeline: same playlist, no discontinuity, numbers contiguous.
        assert after.url == before.url
        assert "#EXT-X-DISCONTINUITY" not in after.text
        numbers = [n for n, _ in after.segments]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        state = ingest.room("rtmp-drop")
        assert state["live"] and len(state["speakers"]) == 1
    finally:
        _stop(second)


def ingest_metrics(ingest: Ingest) -> str:
    import httpx

    return httpx.get(f"{ingest.control}/metrics", timeout=5).text


def test_unsupported_codec_is_refused_and_other_rooms_keep_streaming(
    ingest: Ingest, tmp_path: Path,
) -> None:
    good = ingest.create_room("rtmp-steady")
    bad = ingest.create_room("rtmp-mp3")
    steady = ffmpeg_publish(ingest.rtmp_url(good["stream_key"]), 1200, log=tmp_path / "ok.log")
    try:
        wait_for(lambda: ingest.room("rtmp-steady")["speakers"], 15)
        start = media_playlist(ingest.origin, "rtmp-steady").position
        log = tmp_path / "mp3.log"
        mp3 = subprocess.run(
            ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning", "-re", "-f", "lavfi",
             "-i", "sine=frequency=700:sample_rate=44100", "-t", "5", "-c:a", "libmp3lame",
             "-f", "flv", ingest.rtmp_url(bad["stream_key"])],
            capture_output=True, text=True, timeout=30, check=False)
        log.write_text(mp3.stderr)
        assert mp3.returncode != 0
        assert "MP3 audio is not accepted; publish AAC" in mp3.stderr
        assert not ingest.room("rtmp-mp3")["speakers"]
        wait_for(lambda: media_playlist(ingest.origin, "rtmp-steady").position[0] >= start[0] + 2,
                 10, what="the other room still advancing")
        assert steady.poll() is None
        assert tone_db(recent_audio(ingest.origin, "rtmp-steady"), 1200) > -3
    finally:
        _stop(steady)
