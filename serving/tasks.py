"""Stopping asyncio tasks the same way everywhere."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel every task and wait for each to finish; an error on the way out is logged,
    not raised, so one task's failure never stops the others from being shut down."""
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    for t in live:
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await t
            except Exception:
                log.exception("task %s failed while stopping", t.get_name())
