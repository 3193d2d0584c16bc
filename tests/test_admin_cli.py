"""`townsquare rooms ...` against a real `townsquare ingest`: an operator creates, lists,
shows, titles and ends rooms, rotates a key and mutes a speaker without writing JSON by hand
(titles on both databases: SQLite, and PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import PostgresServer, postgres_server
from tests.support.procs import free_port, running

__all__ = ["postgres_server"]  # the session fixture

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


@pytest.fixture(scope="module")
def control_on_postgres(tmp_path_factory: pytest.TempPathFactory,
                        postgres_server: PostgresServer) -> Iterator[str]:
    d = tmp_path_factory.mktemp("admin-pg")
    url = postgres_server.create_database("admin_cli")
    port = free_port()
    args = ["ingest", "--data", str(d / "data"), "--control-port", str(port),
            "--origin-port", str(free_port()), "--rtmp-port", str(free_port())]
    try:
        with running(args, d / "ingest.log", f"http://127.0.0.1:{port}/healthz",
                     env={"TOWNSQUARE_ADMIN_TOKEN": TOKEN, "TOWNSQUARE_DATABASE_URL": url}):
            yield f"http://127.0.0.1:{port}"
    finally:
        postgres_server.drop_database("admin_cli")


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




@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_titles_and_descriptions_from_the_terminal(backend: str,
                                                   request: pytest.FixtureRequest) -> None:
    control = request.getfixturevalue("control" if backend == "sqlite" else "control_on_postgres")
    made = rooms(control, "--json", "create", "titled", "--title", "Town hall",
                 "--description", "Questions for the mayor")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["title"] == "Town hall"

    edited = rooms(control, "edit", "titled", "--title", "Town hall, part 2")
    assert edited.returncode == 0, edited.stderr
    shown = json.loads(rooms(control, "--json", "show", "titled").stdout)
    assert (shown["title"], shown["description"]) == ("Town hall, part 2",
                                                      "Questions for the mayor")
    table = rooms(control, "list")
    assert "Town hall, part 2" in table.stdout

    too_long = rooms(control, "edit", "titled", "--title", "x" * 121)
    assert too_long.returncode != 0 and "title" in too_long.stderr
    assert "at most 120 characters" in too_long.stderr
    # The title outlives the room: an ended room keeps it for its replay.
    assert rooms(control, "end", "titled").returncode == 0
    after = rooms(control, "--json", "edit", "titled", "--description", "Recorded")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["description"] == "Recorded"
    rename = rooms(control, "rename", "titled", "rtmp-1", "Ada")
    assert rename.returncode != 0 and "no room named" in rename.stderr
