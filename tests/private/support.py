"""What the private-room tests share: nodes with private rooms wired in, an edge, a key ring,
publishers, and small waits."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.procs import free_port, wait_http

KEYS = "k1:" + base64.b64encode(b"private-rooms-test-secret-0001").decode()
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # its own session: only what we started
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def spawn(module_args: list[str], log: Path, env: dict[str, str]) -> Proc:
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, *module_args], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **env},
                                cwd=REPO, start_new_session=True)
    return Proc(proc, log)


@dataclass
class Node:
    proc: Proc
    control: str
    origin: str
    rtmp_port: int
    token: str

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.control, timeout=15.0,
                            headers={"Authorization": f"Bearer {self.token}"})

    def create_room(self, name: str, private: bool = False) -> dict[str, Any]:
        with self.api() as c:
            r = c.post("/rooms", json={"name": name, "private": private})
            assert r.status_code == 201, r.text
            return dict(r.json())

    def room(self, name: str) -> dict[str, Any]:
        with self.api() as c:
            r = c.get(f"/rooms/{name}")
            assert r.status_code == 200, r.text
            return dict(r.json())

    def rtmp_url(self, key: str) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/live/{key}"


@contextmanager
def node(tmp: Path, name: str = "node", env: dict[str, str] | None = None,
         token: str | None = None) -> Iterator[Node]:
    control, origin, rtmp = free_port(), free_port(), free_port()
    token = token or "test-admin-" + secrets.token_hex(12)
    full = {"TOWNSQUARE_ADMIN_TOKEN": token, "TOWNSQUARE_HOST": "127.0.0.1",
            "TOWNSQUARE_CONTROL_PORT": str(control), "TOWNSQUARE_ORIGIN_PORT": str(origin),
            "TOWNSQUARE_RTMP_PORT": str(rtmp), "TOWNSQUARE_DATA_DIR": str(tmp / name),
            "TOWNSQUARE_LISTENER_TOKEN_KEYS": KEYS, **(env or {})}
    proc = spawn(["-m", "townsquare", "ingest"], tmp / f"{name}.log", full)
    try:
        wait_http(f"http://127.0.0.1:{control}/healthz", 30, proc.proc)
        yield Node(proc, f"http://127.0.0.1:{control}", f"http://127.0.0.1:{origin}", rtmp,
                   token)
    finally:
        proc.stop()


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} did not happen within {timeout} s")
