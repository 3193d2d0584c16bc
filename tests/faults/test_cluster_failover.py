"""Two ingest nodes sharing PostgreSQL and S3, an origin tier and an edge: the node that owns
a room is killed, the other adopts it once its lease lapses, the speaker reconnects there (as
a TCP load balancer would send it) and the listener page plays on without a reload."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import start_moto
from tests.faults.drill import ROOM, TOKEN, Listeners, Speaker
from tests.ingest.support import recent_audio, tone_db
from tests.support.browser import chromium
from tests.support.postgres import PostgresServer
from tests.support.procs import Service, free_port, wait_http

pytestmark = [pytest.mark.browser, pytest.mark.slow]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LEASE = 3.0


class Node:
    def __init__(self, n: int, tmp: Path, env: dict[str, str]) -> None:
        self.n = n
        self.control, self.origin, self.rtmp = free_port(), free_port(), free_port()
        self.env = {**env, "TOWNSQUARE_NODE_ID": f"node-{n}",
                    "TOWNSQUARE_STORE_SPILL_DIR": str(tmp / f"spill-{n}")}
        args = ["ingest", "--data", str(tmp / "data"), "--control-port", str(self.control),
                "--origin-port", str(self.origin), "--rtmp-port", str(self.rtmp)]
        self.svc = Service(args, tmp / f"node-{n}.log", self.env)
        wait_http(f"{self.api}/healthz", 60, self.svc.proc)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.control}"


def test_a_killed_node_s_room_is_adopted_and_heard_again(
        tmp_path: Path, own_postgres: PostgresServer) -> None:
    s3 = start_moto("cluster")
    env = {**s3.env(), "TOWNSQUARE_ADMIN_TOKEN": TOKEN,
           "TOWNSQUARE_DATABASE_URL": own_postgres.create_database("cluster"),
           "TOWNSQUARE_LEASE_SECONDS": str(LEASE), "TOWNSQUARE_PUBLISH_STATE": "false"}
    services: list[Service] = []
    speaker: Speaker | None = None
    try:
        one = Node(1, tmp_path, env)
        services.append(one.svc)
        two = Node(2, tmp_path, env)
        services.append(two.svc)
        tier_port, edge_port = free_port(), free_port()
        tier = Service(["tier", "--port", str(tier_port)], tmp_path / "tier.log", env)
        services.append(tier)
        wait_http(f"http://127.0.0.1:{tier_port}/healthz", 30, tier.proc)
        edge_url = f"http://127.0.0.1:{edge_port}"
        edge = Service(["edge", "--upstream", f"http://127.0.0.1:{tier_port}", "--port",
                        str(edge_port)], tmp_path / "edge.log")
        services.append(edge)
        wait_http(f"{edge_url}/healthz", 30, edge.proc)

        created = httpx.post(f"{one.api}/rooms", json={"name": ROOM}, headers=AUTH, timeout=10)
        assert created.status_code == 201, created.text
        key = created.json()["stream_key"]
        speaker = Speaker(f"rtmp://127.0.0.1:{one.rtmp}/live/{key}", tmp_path / "speaker.log")
        speaker.start()
        wait_http(f"{edge_url}/live/{ROOM}/master.m3u8", 45)
        room = httpx.get(f"{two.api}/rooms/{ROOM}", headers=AUTH, timeout=10).json()
        assert room["node"] == "node-1", "any node's API names the owner"
        with chromium() as browser:
            page = browser.new_page()
            page.goto(f"{edge_url}/listen/{ROOM}")
            listeners = Listeners({"listen": page})
            listeners.wait_playing(45, advance=3.0)

            killed_at = time.monotonic()
            one.svc.proc.kill()  # SIGKILL, by the pid this test started
            one.svc.proc.wait(10)
            # The load balancer now sends the speaker to the node that is left.
            speaker.url = f"rtmp://127.0.0.1:{two.rtmp}/live/{key}"
            listeners.wait_playing(60, advance=3.0)
            assert page.evaluate("window.townsquare.state") == "playing"
            stalled, heard_at = listeners.stall("listen", killed_at)
        room = httpx.get(f"{two.api}/rooms/{ROOM}", headers=AUTH, timeout=10).json()
        assert room["live"] and room["node"] == "node-2", room
        deadline = time.monotonic() + 30
        while not httpx.get(f"{two.api}/rooms/{ROOM}", headers=AUTH).json()["speakers"]:
            assert time.monotonic() < deadline, "the speaker was not taken by the other node"
            time.sleep(0.3)
        time.sleep(4.5)
        assert tone_db(recent_audio(f"http://127.0.0.1:{two.origin}", ROOM), 440) > -10
        print(f"failover: kill -> audio back at the listener {heard_at - killed_at:.2f} s "
              f"(lease {LEASE} s), silence heard {heard_at - stalled:.2f} s")
    finally:
        if speaker is not None:
            speaker.stop()
        for svc in services:
            svc.stop()
        s3.server.stop()  # type: ignore[attr-defined]
