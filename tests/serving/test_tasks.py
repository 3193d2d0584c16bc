"""Stopping tasks: every task is waited for, errors are logged, the caller's cancel stands."""

from __future__ import annotations

import asyncio
import logging

import pytest

from serving.tasks import cancel_and_wait


async def _forever() -> None:
    await asyncio.Event().wait()


async def _fails_on_cancel() -> None:
    try:
        await asyncio.Event().wait()
    finally:
        raise RuntimeError("broke on the way out")


async def _slow_to_stop(stopping: asyncio.Event) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        stopping.set()
        await asyncio.sleep(30)  # a clean-up that takes long
        raise


async def test_every_task_is_stopped_and_a_failing_one_is_logged_not_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    broken = asyncio.create_task(_fails_on_cancel(), name="broken")
    plain = asyncio.create_task(_forever(), name="plain")
    await asyncio.sleep(0)
    await cancel_and_wait(broken, None, plain)
    assert broken.done() and plain.cancelled()
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        "task broken failed while stopping"]


async def test_a_caller_cancelled_while_it_waits_is_cancelled() -> None:
    stopping = asyncio.Event()
    slow = asyncio.create_task(_slow_to_stop(stopping), name="slow")
    await asyncio.sleep(0)
    caller = asyncio.create_task(cancel_and_wait(slow))
    await stopping.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(caller, 5)  # not after the task's 30 s clean-up
    assert caller.cancelled()
    slow.cancel()
    await asyncio.wait([slow])
