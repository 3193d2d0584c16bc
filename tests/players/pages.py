"""The player pages of `static/` (hls.js from the edge's own copy), served over HTTP from
another origin than the edge, as a site embedding a player would."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

STATIC = Path(__file__).parent / "static"
HLS_JS = Path(__file__).parents[2] / "edge" / "static" / "hls.min.js"


class _Pages(SimpleHTTPRequestHandler):
    def translate_path(self, path: str) -> str:
        name = path.split("?", 1)[0].lstrip("/")
        return str(HLS_JS if name == "hls.min.js" else STATIC / name)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving_pages() -> Iterator[str]:
    """The pages' base URL while the server runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
