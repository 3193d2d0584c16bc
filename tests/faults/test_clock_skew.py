"""Two ingest nodes whose clocks are two leases apart (libfaketime shifts each process's wall
clock, not its monotonic one): the owner's clock a lease behind, the other node's a lease
ahead. With the leases judged by each node's own clock, the node ahead saw the owner's leases
as lapsed and took its room while the owner was live and renewing. Judged by the database's
clock, the room stays with its owner for as long as it lives, and when the owner is killed
the other node adopts it once its lease has run out: not before, and not two leases late."""

from __future__ import annotations

import glob
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import start_moto
from tests.faults.drill import AUTH, ROOM, TOKEN, ClusterNode, Speaker, rooms_told
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.slow
# The fence stops the owner's room when no renewal has finished for two thirds of a lease, so
# each must finish within a third of one: with 3 s, a renewal held up past 2 s on a busy
# machine did that, and with 6 s one held up past 2 s in a clean run (28 November, beside the
# other lane's drills). That is not what this drill is about. The clocks stay two leases
# apart.
LEASE = 9.0
SKEW = LEASE  # seconds each node's clock is off, in opposite directions
WATCH = 2 * LEASE  # seconds the room must stay with its live owner
SLACK = 2.5  # past the lease: a look for orphans (every second), the take, a poll


def _faketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        pytest.fail("no libfaketime: install Debian's `faketime` (`./dev test` does)",
                    pytrace=False)
    return found[0]


def _skewed(env: dict[str, str], skew: float) -> dict[str, str]:
    """`env` with the process's wall clock `skew` seconds off (its monotonic clock true)."""
    return {**env, "LD_PRELOAD": _faketime(), "FAKETIME": f"{skew:+g}",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def test_nodes_whose_clocks_disagree_leave_a_room_with_its_owner_until_its_lease_runs_out(
        tmp_path: Path, own_postgres: PostgresServer) -> None:
    s3 = start_moto(f"skew-{time.time_ns()}")
    env = {**s3.env(), "TOWNSQUARE_ADMIN_TOKEN": TOKEN,
           "TOWNSQUARE_DATABASE_URL": own_postgres.create_database("skew"),
           "TOWNSQUARE_LEASE_SECONDS": str(LEASE), "TOWNSQUARE_PUBLISH_STATE": "false"}
    behind = ClusterNode(1, tmp_path, _skewed(env, -SKEW))
    speaker: Speaker | None = None
    try:
        ahead = ClusterNode(2, tmp_path, _skewed(env, +SKEW))
    except BaseException:
        behind.svc.stop()
        raise
    try:
        created = httpx.post(f"{behind.api}/rooms", json={"name": ROOM}, headers=AUTH,
                             timeout=10)
        assert created.status_code == 201, created.text
        speaker = Speaker(f"rtmp://127.0.0.1:{behind.rtmp}/live/{created.json()['stream_key']}",
                          tmp_path / "speaker.log")
        speaker.start()
        deadline = time.monotonic() + 30
        while not (room := behind.room())["live"] or room["node"] != behind.id:
            assert time.monotonic() < deadline, room
            time.sleep(0.2)
        epoch = room["epoch"]

        # Live and renewing, the owner keeps its room: the node ahead must not take it.
        end = time.monotonic() + WATCH
        while time.monotonic() < end:
            seen = ahead.room()
            # (The messages, and the logs in them, are only made when an assertion fails.)
            assert seen["node"] == behind.id, (
                f"{ahead.id}, its clock {2 * SKEW:g} s ahead of the owner's, took the room: "
                f"{seen}\n{rooms_told({n.id: n.output() for n in (behind, ahead)})}")
            assert seen["epoch"] == epoch, (
                f"the owner took its own room again (epoch {epoch} -> {seen['epoch']}): it "
                f"lost its lease, see its log\n"
                f"{rooms_told({n.id: n.output() for n in (behind, ahead)})}")
            time.sleep(0.25)

        # Killed, the owner renews nothing: the room is adopted once its lease has lapsed.
        behind.svc.signal(signal.SIGKILL)
        killed = time.monotonic()
        while (seen := ahead.room())["node"] != ahead.id:
            assert time.monotonic() < killed + LEASE + SLACK, (
                f"not adopted {LEASE + SLACK:g} s after the kill: {seen}\n"
                f"{rooms_told({ahead.id: ahead.output()})}")
            time.sleep(0.1)
        adopted = time.monotonic() - killed
        print(f"\nclocks {2 * SKEW:g} s apart, lease {LEASE:g} s: the room stayed with its "
              f"owner for {WATCH:g} s; adopted {adopted:.2f} s after the owner was killed "
              f"(epoch {epoch} -> {seen['epoch']})")
        assert seen["epoch"] > epoch
    finally:
        if speaker is not None:
            speaker.stop()
        for node in (behind, ahead):
            node.svc.stop()
        s3.server.stop()  # type: ignore[attr-defined]
