"""Readers held on a live room are woken by the change they wait for, however their wait and
the change interleave on the event loop: a held request that misses the epoch's stop waits
out its whole hold (three target durations) and holds up a node's shutdown behind it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from packager.ladder import DEFAULT_LADDER, parse_ladder
from packager.live import Hub, LiveRoom
from packager.origin import HubLive, Origin
from packager.playlist import MediaPlaylist, Part, Segment
from packager.store import LocalStore


def _room() -> LiveRoom:
    renditions = parse_ladder(DEFAULT_LADDER)
    segment = Segment(1, 1.92, "e1-x/s1.m4s", 1.7e9,
                      tuple(Part(0.21333, f"e1-x/p1.{i}.m4s") for i in range(9)))
    pl = MediaPlaylist(2, 0.24, "e1-x/init.mp4", (segment,), (), next_msn=2)
    return LiveRoom("talk", "e1-x", renditions, {r.name: pl for r in renditions})


async def _turns(n: int = 10) -> None:
    """Let the loop run `n` turns: whatever was woken has run by then."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_change_before_the_waiting_task_first_runs_still_wakes_it() -> None:
    room = _room()
    name = next(iter(room.renditions))
    # The wait is asked for now; the task that awaits it runs on a later turn of the loop.
    waiter = asyncio.ensure_future(asyncio.wait_for(asyncio.shield(room.changed(name)), 30))
    room.stop()  # this turn, before that task has run
    await _turns()
    assert waiter.done(), "the change made between asking and awaiting was missed"


async def test_a_request_held_as_the_epoch_stops_is_let_go_at_once(tmp_path: Path) -> None:
    room = _room()
    hub = Hub()
    hub.put(room)
    origin = Origin(LocalStore(tmp_path), HubLive(hub))
    name = next(iter(room.renditions))
    held = asyncio.create_task(origin._wait(room, name, 2, 0, 30))
    await asyncio.sleep(0)  # it has looked at the epoch and begun to wait
    room.stop()
    await _turns()
    assert held.done(), "held until its time ran out, not let go when the epoch stopped"
    assert held.result() is False
