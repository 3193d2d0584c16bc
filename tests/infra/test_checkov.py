"""checkov finds no failed check that is not suppressed in the code with a stated reason.

checkov lives in its own virtualenv (infra/checks/install-checkov.sh) because it pins
boto3 and friends older than townsquare needs. Offline: --skip-download, no external
modules fetched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import INFRA, REPO

INSTALL = "bash infra/checks/install-checkov.sh"
SKIP = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?")


def _checkov() -> str | None:
    override = os.environ.get("TOWNSQUARE_CHECKOV")
    candidates = [override] if override else []
    candidates += [str(REPO / ".venv-checkov" / "bin" / "checkov"), shutil.which("checkov")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    exe = _checkov()
    if exe is None:
        message = f"checkov is not installed; run `{INSTALL}`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    common = ["--skip-download", "--output", "json"]
    # `--file` beside `--directory` makes checkov drop the directory: two runs, in parallel.
    targets = {
        "terraform": ["--directory", "infra", "--framework", "terraform"],
        "dockerfile": ["--file", "Dockerfile", "--framework", "dockerfile"],
    }
    started = time.monotonic()
    procs = {
        kind: subprocess.Popen(
            [exe, *args, *common],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for kind, args in targets.items()
    }
    reports = []
    for kind, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert out.strip(), f"checkov ({kind}) printed nothing (exit {proc.returncode}): {err[-2000:]}"
        parsed = json.loads(out)
        reports += parsed if isinstance(parsed, list) else [parsed]
    elapsed = time.monotonic() - started
    summary = {
        key: sum(r["summary"][key] for r in reports)
        for key in ("passed", "failed", "skipped", "parsing_errors")
    }
    print(f"checkov {summary} in {elapsed:.1f}s")
    return {"reports": reports, "summary": summary, "types": {r["check_type"] for r in reports}}


def test_checkov_scanned_terraform_and_the_dockerfile(report: dict[str, Any]) -> None:
    assert {"terraform", "dockerfile"} <= report["types"]
    assert report["summary"]["passed"] > 100
    assert report["summary"]["parsing_errors"] == 0


def test_checkov_finds_no_failed_check(report: dict[str, Any]) -> None:
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range'][0]})"
        for r in report["reports"]
        for c in r["results"].get("failed_checks", [])
    ]
    assert not failed, "unsuppressed checkov findings:\n" + "\n".join(failed)


def test_every_skipped_check_states_its_reason(report: dict[str, Any]) -> None:
    bare = [
        f"{c['check_id']} {c['resource']}"
        for r in report["reports"]
        for c in r["results"].get("skipped_checks", [])
        if len((c.get("check_result", {}).get("suppress_comment") or "").strip()) < 15
    ]
    assert not bare, f"checkov skips without a reason: {bare}"


def test_every_skip_comment_in_the_code_has_a_reason() -> None:
    files = [*INFRA.rglob("*.tf"), REPO / "Dockerfile"]
    bare = [
        f"{p.relative_to(REPO)}: {m.group(1)}"
        for p in files
        for m in SKIP.finditer(p.read_text())
        if len((m.group(2) or "").strip()) < 15
    ]
    assert not bare, f"skip comments without a reason: {bare}"
