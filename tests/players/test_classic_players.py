"""The players people have on their desktops play the room through a real edge: VLC, mpv and
GStreamer (`playbin3`), the three from Debian, given the master playlist as a listener would
paste it. None of them knows LL-HLS: they read the tags of plain HLS, play whole segments,
and must play the fMP4 AAC and Opus renditions all the same.

Each player writes the audio it would have played to a file, the three at once. The room's
test signal beeps at every wall-clock second, so what they wrote is checked by its beeps: a
second apart from the first to the last means no gap, no segment played twice and none
skipped, across whatever rendition switches the player made. They join as the room's master
appears, as the listeners who wait for a room to go live do: the start no player may fail.
Joined later, they start further back (VLC 3 eight segments, GStreamer and mpv, which is
ffmpeg's reader, three): a second round in a version of this test that waited for ten
segments passed three runs of three, VLC's beeps 0.995-1.005 s apart, and was left out for
the suite's time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.players.conftest import ROOM
from tests.support.audio import beep_onsets, first_channel

# Seconds of audio each player is asked for.
PLAY_SECONDS = 10
# A beep may move by a read of the demo's source (21 ms) and a window (5 ms). VLC joining a
# room that has just begun plays at the live edge, where it drops a frame or two as its
# clock catches up: beeps 0.955-1.005 s apart, measured. A part missed or played twice moves
# a beep by 0.21 s.
SPACING_SLACK = 0.1


@dataclass
class Player:
    name: str
    out: Path
    log: Path
    proc: subprocess.Popen[bytes]
    stop_by_signal: bool  # VLC; mpv and GStreamer stop by themselves


def _vlc(url: str, out: Path) -> list[str]:
    # No `--run-time`: it counts stream time, and VLC starts its stream time at the first
    # segment of the playlist, not where it begins to play. Stopped by SIGTERM instead,
    # which VLC takes as a quit: the WAV file is finished.
    cmd = ["cvlc", "--intf", "dummy", "--no-video", "--aout", "afile", "--audiofile-file",
           str(out), "--audiofile-wav", url]
    # VLC refuses to run as root (CI's container): it runs as `nobody` there.
    return ["runuser", "-u", "nobody", "--", *cmd] if os.geteuid() == 0 else cmd


def _mpv(url: str, out: Path) -> list[str]:
    return ["mpv", "--no-config", "--no-video", "--ao=pcm", "--audio-format=s16",
            f"--ao-pcm-file={out}", f"--length={PLAY_SECONDS}", url]


def _gstreamer(url: str, out: Path) -> list[str]:
    # The sink ends the stream after PLAY_SECONDS of decoder buffers (AAC's hold 1 024 samples,
    # Opus's 960). Interrupting gst-launch instead aborted it (a mutex cleared while locked),
    # and with `-e` it waited for an end of stream a live playlist never brings.
    buffers = PLAY_SECONDS * 48_000 // 1024
    return ["gst-launch-1.0", "-q", "playbin3", f"uri={url}", "video-sink=fakesink",
            (f"audio-sink=identity eos-after={buffers} ! audioconvert ! wavenc "
             f"! filesink location={out}")]


PLAYERS = (("vlc", _vlc), ("mpv", _mpv), ("gstreamer", _gstreamer))


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every user may write to (VLC runs as `nobody` under root; pytest's own
    temporary folders are readable by their owner only)."""
    path = Path(tempfile.mkdtemp(prefix="townsquare-players-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def _start(name: str, cmd: list[str], out: Path, log: Path) -> Player:
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return Player(name, out, log, proc, stop_by_signal=name == "vlc")


def _finish(player: Player, deadline: float) -> int | None:
    """The player's exit code, or None when it had to be killed at `deadline`."""
    proc = player.proc
    try:
        return proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the player and what it started
        proc.wait(5)
        return None


def test_vlc_mpv_and_gstreamer_play_a_room_from_its_start_without_a_gap(
        edge: str, shared_dir: Path, tmp_path: Path) -> None:
    url = f"{edge}/live/{ROOM}/master.m3u8"
    players = [_start(name, build(url, shared_dir / f"{name}.wav"), shared_dir / f"{name}.wav",
                      tmp_path / f"{name}.log") for name, build in PLAYERS]
    # VLC plays in real time from where it starts, a second or so ahead of the wall clock
    # for what it had buffered; the others read what is there as fast as they can.
    time.sleep(PLAY_SECONDS)
    still_playing = {}
    for player in players:
        if player.stop_by_signal:
            still_playing[player.name] = player.proc.poll() is None
            os.killpg(player.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    codes = {p.name: _finish(p, deadline) for p in players}
    heard = {}
    for player in players:
        log = player.log.read_text(errors="replace")[-3000:]
        if player.stop_by_signal:
            assert still_playing[player.name], (player.name, "stopped by itself", log)
            assert codes[player.name] is not None, (player.name, "did not quit", log)
        else:
            assert codes[player.name] == 0, (player.name, codes[player.name], log)
        assert player.out.exists(), (player.name, "wrote no audio", log)
        pcm, rate = first_channel(player.out)
        heard[player.name] = (len(pcm) / rate, beep_onsets(pcm, rate))
    print({name: (round(seconds, 2), np.round(np.diff(onsets), 3).tolist())
           for name, (seconds, onsets) in heard.items()})
    for name, (seconds, onsets) in heard.items():
        assert seconds >= PLAY_SECONDS - 1, (name, f"{seconds:.2f} s of audio")
        # A beep in every second of it, the first within its first second.
        assert len(onsets) >= int(seconds) - 1, (name, seconds, onsets)
        assert onsets[0] <= 1 + SPACING_SLACK, (name, onsets)
        spacing = np.diff(onsets)
        assert np.all(np.abs(spacing - 1.0) <= SPACING_SLACK), (name, spacing.round(3))
