"""A broadcast encodes on the shared pool through its lane: the parts it stores are the very
bytes the ladder's encoders cut when fed the same program directly, each is cut at the same
block although the lane wakes the pool once a part rather than once a block, and a failing
encoder ends the epoch instead of the process."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from hls.names import part_name, room_key
from packager.cmaf import LadderEncoder, LadderEvent, PartReady
from packager.errors import BroadcastClosed, EncodeError
from packager.ladder import SAMPLE_RATE
from packager.pipeline import EncoderLane, Packager
from packager.settings import PackagerSettings

BLOCK = 960  # the program clock's 20 ms


def _program(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    return np.vstack([tone, tone[::-1]]).astype(np.float32)


def _held_seconds() -> float:
    return REGISTRY.get_sample_value("townsquare_packager_pcm_held_seconds") or 0.0


async def test_stored_parts_are_the_bytes_the_encoders_cut_fed_directly(tmp_path: Path) -> None:
    pcm = _program(4.0)
    held_before = _held_seconds()
    settings = PackagerSettings(data_dir=tmp_path / "data", publish_state=False)
    packager = Packager(settings)
    await packager.start()
    b = packager.start_broadcast("lane")
    for i in range(0, pcm.shape[1], BLOCK):
        b.feed(pcm[:, i:i + BLOCK])
        if i % (5 * BLOCK) == 0:
            await asyncio.sleep(0)  # blocks arrive both one by one and several at once
    await b.close()
    await packager.close()
    assert _held_seconds() == pytest.approx(held_before, abs=1e-9)  # the end took what was held

    direct = LadderEncoder(settings.renditions(), settings.segment_units)
    events = direct.push(pcm) + direct.finish()
    parts = [(name, ev) for name, ev in events if isinstance(ev, PartReady)]
    assert {name for name, _ in parts} == {r.name for r in settings.renditions()}
    for name, ev in parts:
        key = room_key("lane", name, b.epoch.id, part_name(ev.msn, ev.index))
        assert (tmp_path / "data" / key).read_bytes() == ev.data, key


async def test_a_failing_encoder_ends_the_epoch_and_refuses_audio(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packager = Packager(PackagerSettings(data_dir=tmp_path / "data", publish_state=False))
    await packager.start()
    b = packager.start_broadcast("broken")

    def fail(self: LadderEncoder, pcm: np.ndarray) -> list[object]:
        raise EncodeError("the codec gave up")

    monkeypatch.setattr(LadderEncoder, "push", fail)
    b.feed(_program(0.02))
    for _ in range(200):
        if b.closed:
            break
        await asyncio.sleep(0.01)
    assert b.closed
    with pytest.raises(BroadcastClosed):
        b.feed(_program(0.02))
    with pytest.raises(EncodeError):
        await b.close()
    await packager.close()


class _CountingPool(ThreadPoolExecutor):
    """A real pool that counts the jobs it was given."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.jobs = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.jobs += 1
        return super().submit(fn, *args, **kwargs)


def _cut(events: list[LadderEvent], block: int) -> list[tuple[int, str, str, int, bytes]]:
    return [(block, name, type(ev).__name__, ev.msn, ev.data) for name, ev in events]


async def test_the_lane_wakes_the_pool_once_a_part_and_cuts_each_at_the_block_it_is_due() -> None:
    settings = PackagerSettings()
    pcm = _program(6.0)
    blocks = [pcm[:, i:i + BLOCK] for i in range(0, pcm.shape[1], BLOCK)]
    direct = LadderEncoder(settings.renditions(), settings.segment_units)
    expected = [cut for k, b in enumerate(blocks) for cut in _cut(direct.push(b), k)]

    loop = asyncio.get_running_loop()
    got: list[tuple[int, str, str, int, bytes]] = []
    current = [0]
    pool = _CountingPool()
    lane = EncoderLane(LadderEncoder(settings.renditions(), settings.segment_units), pool, loop,
                       lambda events: got.extend(_cut(events, current[0])),
                       lambda events: None, lambda exc: None)
    try:
        for k, block in enumerate(blocks):
            current[0] = k
            lane.put(block)
            for _ in range(500):  # let the encoder finish what it was handed (no timing)
                if not lane._busy:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0)  # its events are delivered on the loop
    finally:
        pool.shutdown()

    assert got == expected
    parts = sum(1 for _, _, kind, _, _ in expected if kind == "PartReady")
    # One wake-up per part boundary of the ladder (the renditions' boundaries differ), far
    # fewer than one per block.
    assert pool.jobs <= parts
    assert pool.jobs < len(blocks) / 3
    # What is held back is at most one part and the codec's look-ahead.
    assert lane.held <= max(r.part_frames * r.frame_size + r.frame_size
                            for r in settings.renditions())
