"""The source stays fully typed: mypy --strict over every package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hls", "registry", "serving", "ingest", "packager", "edge", "loadtest", "capacity",
            "townsquare")


def test_sources_pass_mypy_strict() -> None:
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
                        *PACKAGES],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
