"""`--source mic`: the host microphone through PyAV's ALSA input, or a clear way out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ingest.sources import SourceError, open_microphone

NO_SOUND = not os.path.exists("/dev/snd") and not os.environ.get("PULSE_SERVER")


@pytest.mark.skipif(not NO_SOUND, reason="this machine has sound devices")
def test_no_device_gives_an_error_that_says_what_to_do() -> None:
    with pytest.raises(SourceError) as err:
        open_microphone()
    text = str(err.value)
    assert "/dev/snd is missing" in text
    assert "TOWNSQUARE_MIC_DEVICE" in text and "--source" in text


@pytest.mark.skipif(not os.path.exists("/usr/share/alsa/alsa.conf"), reason="no ALSA config")
def test_alsa_capture_path_reads_program_audio() -> None:
    # ALSA's `null` PCM exists wherever alsa.conf does: the real PyAV capture path, no card.
    mic = open_microphone("null")
    try:
        block = mic.read(960)
        assert block is not None and block.shape == (2, 960) and block.dtype == np.float32
    finally:
        mic.close()


@pytest.mark.skipif(not NO_SOUND, reason="this machine has sound devices")
def test_cli_mic_source_fails_clearly_without_a_device(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "townsquare", "ingest", "--room", "mic-room", "--source", "mic",
         "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode != 0
    assert "cannot open the microphone" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
