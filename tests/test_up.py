"""`townsquare up` as a new user runs it: every service answers and the demo room plays."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.procs import free_port, free_port_with, running, wait_http

pytestmark = pytest.mark.slow


TOKEN = "test-admin-token-0123456789"


def _up(tmp_path: Path) -> tuple[list[str], dict[str, int]]:
    """`townsquare up --demo demo` on free ports: its arguments and the ports."""
    ports = {"control": free_port_with((10, 20)), "origin": free_port_with((101, 102, 103)),
             "edge": free_port(), "rtmp": free_port_with((1, 2))}
    args = ["up", "--demo", "demo", "--data", str(tmp_path / "data"),
            "--control-port", str(ports["control"]), "--origin-port", str(ports["origin"]),
            "--edge-port", str(ports["edge"]), "--rtmp-port", str(ports["rtmp"])]
    return args, ports


def _until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return found


def _talking(edge: str, room: str) -> dict[str, Any] | None:
    """The room's status through the edge once its first speaker is heard talking."""
    answer = httpx.get(f"{edge}/live/{room}/status.json")
    doc: dict[str, Any] = answer.json() if answer.status_code == 200 else {}
    return doc if doc.get("speakers") and doc["speakers"][0]["speaking"] else None


def test_up_serves_the_demo_room_through_the_edge(tmp_path: Path) -> None:
    args, ports = _up(tmp_path)
    edge = f"http://127.0.0.1:{ports['edge']}"
    token = TOKEN
    with running(args, tmp_path / "up.log", f"http://127.0.0.1:{ports['origin']}/healthz",
                 env={"TOWNSQUARE_ADMIN_TOKEN": token}) as up:
        wait_http(f"{edge}/healthz", 30, up.proc)
        wait_http(f"{edge}/live/demo/master.m3u8", 30, up.proc)
        for port in (ports["control"], ports["origin"], ports["edge"]):
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            assert "townsquare_" in metrics
        assert httpx.get(f"{edge}/listen/demo").status_code == 200
        out = tmp_path / "demo.wav"
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i",
                        f"{edge}/live/demo/master.m3u8", "-t", "4", "-y", str(out)],
                       check=True, timeout=60)
        dur = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration",
                              "-of", "csv=p=0", str(out)], capture_output=True, text=True)
        assert abs(float(dur.stdout) - 4.0) < 0.05
        # The demo is a real room: the test signal is its first speaker, others can join.
        room = httpx.get(f"http://127.0.0.1:{ports['control']}/rooms/demo",
                         headers={"Authorization": f"Bearer {token}"}).json()
        assert room["live"] and [s["kind"] for s in room["speakers"]] == ["local"]
        # A newcomer sees it in the directory with its title and its speaker, talking.
        status = _talking(edge, "demo")
        assert status is not None and status["title"] == "townsquare demo", status
        assert [s["name"] for s in status["speakers"]] == ["Test tone"]
        listed = _until(lambda: [r for r in httpx.get(f"{edge}/live/rooms.json").json()["live"]
                                 if r["speakers"]], "the demo's speaker in the directory")
        assert [(r["room"], r["title"], r["speakers"]) for r in listed] == [
            ("demo", "townsquare demo", ["Test tone"])]
        printed = up.output()
        for needle in (f"admin token:  {token}", f"{edge}/listen/demo", "rtmp://127.0.0.1:",
                       "/broadcast/demo  (stream key tsk_"):
            assert needle in printed
        # Its origin serves the room from memory: no live state is written for followers.
        assert list((tmp_path / "data").rglob("init.mp4"))
        assert not list((tmp_path / "data").rglob("state.json"))


def test_up_killed_takes_its_edge_along_and_resumes_the_demo_room(tmp_path: Path) -> None:
    args, ports = _up(tmp_path)
    edge = f"http://127.0.0.1:{ports['edge']}"
    token = TOKEN
    auth = {"Authorization": f"Bearer {token}"}
    with running(args, tmp_path / "up1.log", f"http://127.0.0.1:{ports['origin']}/healthz",
                 env={"TOWNSQUARE_ADMIN_TOKEN": token}) as up:
        wait_http(f"{edge}/live/demo/master.m3u8", 30, up.proc)
        first = httpx.get(f"http://127.0.0.1:{ports['control']}/rooms/demo", headers=auth).json()
        time.sleep(2)
        up.proc.send_signal(signal.SIGKILL)  # the `up` process only, by its pid
        up.proc.wait(10)
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"{edge}/healthz", timeout=1)
            except httpx.HTTPError:
                break  # the edge child went with its parent: its port is free again
            assert time.monotonic() < deadline, "the edge outlived `up`"
            time.sleep(0.2)
    with running(args, tmp_path / "up2.log", f"http://127.0.0.1:{ports['origin']}/healthz",
                 env={"TOWNSQUARE_ADMIN_TOKEN": token}) as up:
        wait_http(f"{edge}/healthz", 30, up.proc)
        room = httpx.get(f"http://127.0.0.1:{ports['control']}/rooms/demo", headers=auth).json()
        assert room["live"] and room["broadcast_id"] == first["broadcast_id"]
        assert room["epoch"] == first["epoch"] + 1, "the same room, resumed"
        assert "stream key unchanged" in up.output()
        text = httpx.get(f"{edge}/live/demo/aac96/live.m3u8").text
        assert "#EXT-X-DISCONTINUITY" in text


def test_up_with_two_nodes_serves_rooms_from_either_through_one_entry(tmp_path: Path) -> None:
    args, ports = _up(tmp_path)
    edge = f"http://127.0.0.1:{ports['edge']}"
    control = f"http://127.0.0.1:{ports['control']}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with running([*args, "--nodes", "2"], tmp_path / "up.log", f"{control}/healthz",
                 env={"TOWNSQUARE_ADMIN_TOKEN": TOKEN}) as up:
        wait_http(f"http://127.0.0.1:{ports['control'] + 10}/healthz", 60, up.proc)
        wait_http(f"{edge}/live/demo/master.m3u8", 60, up.proc)
        room = httpx.post(f"{control}/rooms", json={"name": "second"}, headers=auth).json()
        # The speaker lands on node 2 (RTMP one port up): the room goes on air there.
        publish = room["rtmp_publish_url"].replace(f":{ports['rtmp']}/", f":{ports['rtmp'] + 1}/")
        speaker = subprocess.Popen(
            ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi",
             "-i", "sine=frequency=660", "-t", "40", "-c:a", "aac", "-f", "flv", publish])
        try:
            wait_http(f"{edge}/live/second/master.m3u8", 60, up.proc)
            state = httpx.get(f"{control}/rooms/second", headers=auth).json()
            assert state["node"] == "node-2" and state["live"], state
            # Its status comes from node 2, through the edge and the tier; the demo's from
            # node 1.
            second = _until(lambda: _talking(edge, "second"), "the speaker on node 2 talking")
            assert [s["name"] for s in second["speakers"]] == ["Speaker 1"]
            assert second["state"] == "live" and second["since"] == pytest.approx(
                time.time(), abs=120)
            demo = _until(lambda: _talking(edge, "demo"), "the demo talking")
            assert demo["title"] == "townsquare demo"
            node1 = httpx.get(f"{control}/rooms/second/status").json()  # asks node 2
            assert node1["room"] == "second" and node1["speakers"][0]["name"] == "Speaker 1"
            out = tmp_path / "second.wav"
            subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i",
                            f"{edge}/live/second/master.m3u8", "-t", "3", "-y", str(out)],
                           check=True, timeout=60)
            assert out.stat().st_size > 3 * 48_000 * 2
        finally:
            speaker.terminate()
            speaker.wait(10)
        printed = up.output()
        assert "node 2:" in printed and "(the origin tier)" in printed
