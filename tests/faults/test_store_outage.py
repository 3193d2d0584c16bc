"""Storage faults: a bucket that does not exist from the start, and S3 gone for 12 s while a
room is on air (twice the store writer's live edge, and more than twice the audio its memory
bound holds). Listeners are served from memory throughout; nothing acknowledged is lost;
shutdown never hangs on a store that does not answer."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import S3Server, start_moto
from tests.support.procs import Service, free_port, wait_http

pytestmark = pytest.mark.slow
TOKEN = "outage-admin-token-0123456789"
DRAIN = 2.0  # the store's drain deadline: ending a room and SIGTERM wait this long, no longer
OUTAGE = 12.0  # seconds without S3
SEGMENT = 1.92  # the demo room's segment duration


class Up:
    """`townsquare up --demo demo --no-edge` on free ports."""

    def __init__(self, tmp: Path, env: dict[str, str], n: int = 1) -> None:
        self.control, self.origin_port, self.rtmp = free_port(), free_port(), free_port()
        self.tmp = tmp
        self.env = {"TOWNSQUARE_ADMIN_TOKEN": TOKEN,
                    "TOWNSQUARE_STORE_DRAIN_SECONDS": str(DRAIN), **env}
        self.svc = self.start(n)

    def start(self, n: int) -> Service:
        args = ["up", "--demo", "demo", "--no-edge", "--data", str(self.tmp / "data"),
                "--control-port", str(self.control), "--origin-port", str(self.origin_port),
                "--rtmp-port", str(self.rtmp)]
        svc = Service(args, self.tmp / f"up-{n}.log", self.env)
        wait_http(f"{self.origin}/healthz", 60, svc.proc)
        wait_http(f"{self.api}/healthz", 60, svc.proc)
        return svc

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.origin_port}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.control}"

    def health(self) -> dict[str, object]:
        return dict(httpx.get(f"{self.api}/healthz", timeout=5).json())

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.origin}/metrics", timeout=5).text
        m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        assert m, name
        return float(m[1])

    def sigterm(self) -> float:
        """SIGTERM; returns how long the process took to exit."""
        t0 = time.monotonic()
        self.svc.proc.send_signal(signal.SIGTERM)
        self.svc.proc.wait(60)
        return time.monotonic() - t0


def _newest_part(base: str) -> tuple[int, int]:
    """(msn, status of the newest listed part) of the demo room's AAC playlist."""
    r = httpx.get(f"{base}/live/demo/aac96/live.m3u8", timeout=5)
    assert r.status_code == 200, r.text
    parts = re.findall(r'#EXT-X-PART:DURATION=[\d.]+,URI="([^"]+)"', r.text)
    seq = int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", r.text)[1])  # type: ignore[index]
    segments = len([ln for ln in r.text.splitlines() if ln and not ln.startswith("#")])
    part = httpx.get(f"{base}/live/demo/aac96/{parts[-1]}", timeout=5)
    return seq + segments, part.status_code


def test_a_wrong_bucket_is_reported_and_the_room_plays_from_memory(
        tmp_path: Path, s3_server: S3Server) -> None:
    env = {**s3_server.env(), "TOWNSQUARE_S3_BUCKET": "no-such-bucket-here"}
    up = Up(tmp_path, env)
    try:
        out = ""
        deadline = time.monotonic() + 15
        while "does not exist" not in out:
            assert time.monotonic() < deadline, out[-2000:]
            time.sleep(0.2)
            out = up.svc.output()
        assert "no-such-bucket-here" in out
        wait_http(f"{up.origin}/live/demo/master.m3u8", 30, up.svc.proc)
        first, status = _newest_part(up.origin)
        assert status == 200
        deadline = time.monotonic() + 3
        while (later := _newest_part(up.origin))[0] <= first:
            assert later[1] == 200 and time.monotonic() < deadline, "the room plays on, from memory"
            time.sleep(0.2)
        assert later[1] == 200, "the room plays on, from memory"
        store = up.health()["store"]
        assert isinstance(store, dict) and not store["ok"], store
        assert "no-such-bucket-here" in str(store["error"])
        took = up.sigterm()
        assert took < DRAIN + 6, f"SIGTERM took {took:.1f} s with the store refusing writes"
        print(f"wrong bucket: SIGTERM returned in {took:.2f} s (drain deadline {DRAIN} s)")
    finally:
        up.svc.stop()


@pytest.fixture
def own_s3() -> Iterator[S3Server]:
    """A moto server of this test's own, so stopping it harms no other test."""
    s3 = start_moto("outage-test")
    try:
        yield s3
    finally:
        s3.server.stop()  # type: ignore[attr-defined]


def _rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise LookupError("no VmHWM")


def _keys(s3: S3Server, prefix: str) -> set[str]:
    client = s3.client()
    return {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=s3.bucket, Prefix=prefix) for o in page.get("Contents", [])}


def test_twelve_seconds_without_s3_lose_nothing_and_shutdown_never_hangs(
        tmp_path: Path, own_s3: S3Server) -> None:
    bound = 256 * 1024  # 12 s of the ladder is ~620 kB: most of it must go to disk
    prefix = "outage"
    env = {**own_s3.env(), "TOWNSQUARE_S3_PREFIX": prefix,
           "TOWNSQUARE_STORE_MEMORY_BYTES": str(bound), "TOWNSQUARE_STORE_RETRY_MAX_SECONDS": "2"}
    up = Up(tmp_path, env)
    server = own_s3.server
    try:
        wait_http(f"{up.origin}/live/demo/master.m3u8", 30, up.svc.proc)
        time.sleep(2)
        server.stop()  # type: ignore[attr-defined]
        msns, pending = [], []
        end = time.monotonic() + OUTAGE
        while time.monotonic() < end:
            msn, status = _newest_part(up.origin)
            assert status == 200, "listeners are served from memory"
            msns.append(msn)
            pending.append(up.metric("townsquare_store_pending_bytes"))
            time.sleep(1)
        assert msns[-1] - msns[0] >= int(0.7 * OUTAGE / SEGMENT), \
            "the room kept advancing through the outage"
        assert max(pending) <= bound, "memory held for the store stays under its bound"
        assert up.metric("townsquare_store_spilled_objects") > 0, "the rest waited on disk"
        peak = _rss_peak_kib(up.svc.proc.pid)
        server.start()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 60
        while up.metric("townsquare_store_pending_objects") or up.metric(
                "townsquare_store_spilled_objects"):
            assert time.monotonic() < deadline, "the backlog never reached the store"
            time.sleep(0.5)
        # Every segment the room cut is in the bucket, in every rendition.
        last = _newest_part(up.origin)[0] - 1
        keys = _keys(own_s3, f"{prefix}/live/demo/")
        for rendition in ("aac96", "aac48", "opus64"):
            stored = {int(m[1]) for k in keys
                      if (m := re.search(rf"/{rendition}/e\d+-\w+/s(\d+)\.m4s$", k))}
            assert set(range(1, last)) <= stored, (rendition, sorted(set(range(1, last)) - stored))

        # Ending the room while S3 is away returns within the deadline; so does SIGTERM.
        bid = httpx.get(f"{up.api}/rooms/demo", headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=5).json()["broadcast_id"]
        server.stop()  # type: ignore[attr-defined]
        t0 = time.monotonic()
        r = httpx.post(f"{up.api}/rooms/demo/end", headers={"Authorization": f"Bearer {TOKEN}"},
                       timeout=60)
        ended_in = time.monotonic() - t0
        assert r.status_code == 200 and ended_in < DRAIN + 4, ended_in
        took = up.sigterm()
        assert took < DRAIN + 6, took
        spill = tmp_path / "data" / "spill"
        assert any(spill.rglob("*")), "what S3 did not take waits on disk"
        server.start()  # type: ignore[attr-defined]
        up.svc = up.start(2)
        deadline = time.monotonic() + 60
        while up.metric("townsquare_store_spilled_objects"):
            assert time.monotonic() < deadline, "spilled objects were not uploaded on the next start"
            time.sleep(0.5)
        # The ended broadcast's recording is whole, from the objects the spill delivered.
        keys = _keys(own_s3, f"{prefix}/live/demo/")
        assert f"{prefix}/live/demo/{bid}/epochs.json" in keys
        rec = httpx.get(f"{up.origin}/live/demo/{bid}/aac96/recording.m3u8", timeout=10)
        assert rec.status_code == 200 and rec.text.endswith("#EXT-X-ENDLIST\n"), rec.text[-300:]
        listed = re.findall(r"^\.\./\.\./(\S+\.m4s)$", rec.text, re.MULTILINE)
        assert len(listed) >= last - 1
        assert all(f"{prefix}/live/demo/{name}" in keys for name in listed)
        print(f"S3 outage: peak RSS {peak / 1024:.1f} MiB, store memory bound "
              f"{bound >> 10} KiB, most held {max(pending) / 1024:.0f} KiB, end during outage "
              f"{ended_in:.2f} s, SIGTERM {took:.2f} s")
    finally:
        up.svc.stop()
