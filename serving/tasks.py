"""Stopping asyncio tasks the same way everywhere."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel every task and wait for each to finish; an error on the way out is logged,
    not raised, so one task's failure never stops the others from being shut down.

    A cancellation of the caller while it waits is its own and goes on up: the tasks'
    CancelledError is theirs and ends here."""
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    if not live:
        return
    # asyncio.wait never raises what the tasks raise, only the caller's own cancellation.
    await asyncio.wait(live)
    for t in live:
        if not t.cancelled() and (exc := t.exception()) is not None:
            log.error("task %s failed while stopping", t.get_name(), exc_info=exc)
