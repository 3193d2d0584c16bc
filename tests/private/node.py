"""A townsquare ingest node with private rooms wired in: control API, RTMP, WHIP and an origin
that serves private rooms only under `/private/` (`python -m tests.private.node`).

It is `townsquare ingest` with the two lines `townsquare/stack.py` does not have yet: the
registry opened once and handed to both the origin (`RegistryPrivacy`) and ingest, and
`listener_token_keys` read from the environment. Settings come from `TOWNSQUARE_*` as usual.
"""

from __future__ import annotations

import asyncio
import signal

from ingest.service import open_registry, run
from ingest.settings import IngestSettings
from packager.origin import HubLive, build_app
from packager.pipeline import Packager
from packager.privacy import RegistryPrivacy
from serving.http import http_server, serve_http
from serving.tasks import cancel_and_wait


class NodeSettings(IngestSettings):
    listener_token_keys: str = ""  # proposed for IngestSettings itself


async def main() -> None:
    settings = NodeSettings()
    registry = await open_registry(settings)
    packager = Packager(settings)
    await packager.start()
    app = build_app(packager.store, HubLive(packager.hub), RegistryPrivacy(registry, ttl=0.5))
    origin = asyncio.create_task(serve_http(http_server(app, settings.host,
                                                        settings.origin_port)))
    ingest = asyncio.create_task(run(settings, packager, registry=registry))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([waiter, origin, ingest], return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(waiter, ingest)
        await packager.close(suspend=True)
        await cancel_and_wait(origin)
        await registry.close()


if __name__ == "__main__":
    asyncio.run(main())
