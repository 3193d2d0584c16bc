"""Running a service's main coroutine on uvloop until SIGINT or SIGTERM.

SIGUSR1 writes every asyncio task's stack to the log: when a process does not stop, or
stops answering, `kill -USR1 PID` says where each task waits. Beside the service, a watcher
measures how late its event loop runs (`serving.lag`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from serving.lag import watch_lag
from serving.tasks import cancel_and_wait


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run `main(stop)` on uvloop where available; SIGINT/SIGTERM set `stop`."""
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        watcher = loop.create_task(watch_lag(), name="loop-lag")
        try:
            await main(stop)
        finally:
            await cancel_and_wait(watcher)

    with contextlib.suppress(KeyboardInterrupt):
        runner(wrapper())


def dump_tasks() -> None:
    """Log the stack of every task of the running loop (SIGUSR1)."""
    out = io.StringIO()
    tasks = asyncio.all_tasks()
    for task in tasks:
        out.write(f"--- {task.get_name()}: {task.get_coro()!r}\n")
        task.print_stack(limit=12, file=out)
    logging.getLogger("townsquare").warning("%d tasks:\n%s", len(tasks), out.getvalue())
