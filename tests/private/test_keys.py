"""Stream keys rotated and revoked through the API, against a real node (control API, RTMP,
WHIP) and the ffmpeg CLI publishing: the old key's live speaker is disconnected and refused
again, the new key publishes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from tests.ingest.support import ffmpeg_publish
from tests.private.support import Node, node, wait_until

OFFER = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


def _speakers(n: Node, room: str) -> list[dict[str, object]]:
    return list(n.room(room)["speakers"])


def _publish(n: Node, key: str, log: Path) -> subprocess.Popen[bytes]:
    return ffmpeg_publish(n.rtmp_url(key), 440, seconds=30, log=log)


def _gone(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """ffmpeg's exit status once it exits by itself within `timeout`; None when it had to be
    killed (it was still publishing)."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child, by its pid
        proc.wait(5)
        return None


def test_rotation_cuts_the_old_keys_speaker_and_the_new_key_publishes(tmp_path: Path) -> None:
    with node(tmp_path) as n:
        old = n.create_room("rotating")["stream_key"]
        speaker = _publish(n, old, tmp_path / "old.log")
        try:
            wait_until(lambda: _speakers(n, "rotating"), 15, "the speaker joining")
            with n.api() as c:
                r = c.post("/rooms/rotating/key")
            assert r.status_code == 200, r.text
            rotated = r.json()
            assert rotated["key_generation"] == 2 and rotated["stream_key"] != old
            assert _gone(speaker) not in (0, None), "ffmpeg kept publishing with the rotated key"
        finally:
            _gone(speaker, 0)
        assert _speakers(n, "rotating") == []

        again = _publish(n, old, tmp_path / "again.log")
        assert _gone(again, 15) not in (0, None)
        assert "BadName" in (tmp_path / "again.log").read_text() or _speakers(n, "rotating") == []

        fresh = _publish(n, rotated["stream_key"], tmp_path / "new.log")
        try:
            joined = wait_until(lambda: _speakers(n, "rotating"), 15, "the new key publishing")
            assert len(joined) == 1
        finally:
            _gone(fresh, 0)
        metrics = httpx.get(n.control + "/metrics").text
        assert "townsquare_ingest_key_disconnects_total 1.0" in metrics


def test_revocation_cuts_the_speaker_and_no_key_works_until_the_next_rotation(
        tmp_path: Path) -> None:
    with node(tmp_path) as n:
        key = n.create_room("revoked")["stream_key"]
        speaker = _publish(n, key, tmp_path / "speaker.log")
        try:
            wait_until(lambda: _speakers(n, "revoked"), 15, "the speaker joining")
            with n.api() as c:
                r = c.delete("/rooms/revoked/key")
            assert r.status_code == 200, r.text
            assert r.json()["key_revoked"] is True and "stream_key" not in r.json()
            assert _gone(speaker) not in (0, None)
        finally:
            _gone(speaker, 0)
        assert n.room("revoked")["key_revoked"] is True

        again = _publish(n, key, tmp_path / "again.log")
        assert _gone(again, 15) not in (0, None)
        whip = httpx.post(f"{n.control}/whip/revoked", content=OFFER,
                          headers={"content-type": "application/sdp",
                                   "authorization": f"Bearer {key}"})
        assert whip.status_code == 401, whip.text
        assert _speakers(n, "revoked") == []

        with n.api() as c:
            r = c.post("/rooms/revoked/key")
        assert r.status_code == 200 and r.json()["key_generation"] == 3
        fresh = _publish(n, r.json()["stream_key"], tmp_path / "new.log")
        try:
            wait_until(lambda: _speakers(n, "revoked"), 15, "the new key publishing")
        finally:
            _gone(fresh, 0)


def test_keys_of_unknown_rooms_cannot_change(tmp_path: Path) -> None:
    with node(tmp_path) as n, n.api() as c:
        assert c.post("/rooms/nobody/key").status_code == 404
        assert c.delete("/rooms/nobody/key").status_code == 404
        assert httpx.post(f"{n.control}/rooms/nobody/key").status_code == 401
