"""Local capture of a media file: `townsquare ingest --room R --source FILE`."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import av
import m3u8
import pytest

from tests.support.procs import running


def test_file_source_is_broadcast_whole_and_recorded(tmp_path: Path) -> None:
    wav = tmp_path / "speech.wav"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=frequency=500:sample_rate=44100:duration=3", "-ac", "1", "-y", str(wav)],
                   check=True)
    data = tmp_path / "data"
    with running(["ingest", "--room", "file", "--source", str(wav), "--data", str(data)],
                 tmp_path / "ingest.log", None) as svc:
        svc.proc.wait(30)
        assert svc.proc.returncode == 0, svc.output()
        assert "ended" in svc.output()
    rec = next(data.glob("live/file/*/aac48/recording.m3u8"))
    pl = m3u8.loads(rec.read_text())
    assert pl.is_endlist
    init = pl.segment_map[0].uri
    blob = (rec.parent / init).read_bytes() + b"".join(
        (rec.parent / s.uri).read_bytes() for s in pl.segments)
    with av.open(io.BytesIO(blob)) as c:
        seconds = sum(f.samples for f in c.decode(audio=0)) / 48000
    assert abs(seconds - 3.0) <= 0.24  # 44.1 kHz mono in, 48 kHz stereo out


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "townsquare", "ingest", "--room", "x", "--source",
                        str(tmp_path / "nope.wav"), "--data", str(tmp_path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "cannot open" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("room", ["Bad", "-x", "a" * 65, "a/b"])
def test_bad_room_names_are_refused(room: str, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "townsquare", "ingest", f"--room={room}", "--data",
                        str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "must match" in r.stderr
