"""`townsquare rooms ...` against a real `townsquare ingest`: an operator creates, lists,
shows and ends rooms, rotates a key and mutes a speaker without writing JSON by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import free_port, running

TOKEN = "admin-cli-test-token-0123456789"


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("admin")
    port = free_port()
    args = ["ingest", "--data", str(d / "data"), "--control-port", str(port),
            "--origin-port", str(free_port()), "--rtmp-port", str(free_port())]
    with running(args, d / "ingest.log", f"http://127.0.0.1:{port}/healthz",
                 env={"TOWNSQUARE_ADMIN_TOKEN": TOKEN}):
        yield f"http://127.0.0.1:{port}"


def rooms(control: str, *args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOWNSQUARE_CONTROL_URL": control, "TOWNSQUARE_ADMIN_TOKEN": token,
           "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "townsquare", "rooms", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_create_list_show_rotate_and_end_a_room(control: str) -> None:
    made = rooms(control, "--json", "create", "cli-room")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["stream_key"]

    table = rooms(control, "list")
    assert table.returncode == 0 and "cli-room" in table.stdout and "waiting" in table.stdout

    shown = rooms(control, "show", "cli-room")
    assert shown.returncode == 0 and "state" in shown.stdout

    rotated = rooms(control, "--json", "rotate-key", "cli-room")
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout)["stream_key"] != key

    ended = rooms(control, "end", "cli-room")
    assert ended.returncode == 0, ended.stderr
    state = json.loads(rooms(control, "--json", "show", "cli-room").stdout)["state"]
    assert state == "ended"


def test_errors_say_what_to_do(control: str, tmp_path: Path) -> None:
    missing = rooms(control, "show", "no-such-room")
    assert missing.returncode != 0 and "no room named 'no-such-room'" in missing.stderr
    refused = rooms(control, "list", token="wrong-token-wrong-token")
    assert refused.returncode != 0 and "refused the admin token" in refused.stderr
    away = rooms(f"http://127.0.0.1:{free_port()}", "list")
    assert away.returncode != 0 and "cannot reach the control API" in away.stderr
    mute = rooms(control, "mute", "no-such-room", "rtmp-1")
    assert mute.returncode != 0 and "no room named" in mute.stderr


