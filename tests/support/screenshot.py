"""Screenshots of the edge's pages for docs/, taken in headless Chromium against a real stack.

    python -m tests.support.screenshot [--out docs] [--edge URL]

Without --edge it starts `townsquare up --demo demo` on free ports in a temporary folder and
stops it afterwards. It waits until the directory lists the demo room and the listener page
plays it with its speaker shown talking, then writes directory.png and listener.png (desktop,
1280×800) and listener-phone.png (390×844 at device scale 2). Run it under the heavy lock:
`flock /tmp/townsquare-heavy.lock .venv/bin/python -m tests.support.screenshot`.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.browser import chromium
from tests.support.procs import Service, free_port, free_port_with, running, wait_http

DEMO = "demo"
ADMIN_TOKEN = "pages-admin-token-0123456789"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

# The listener page is playing and has shown a speaker talking.
PLAYING_AND_TALKING = """() => window.townsquare.state === 'playing'
    && window.townsquare.audience >= 1
    && document.querySelector('#speakers li[data-speaking="true"]') !== null"""


@dataclass
class DemoStack:
    """`townsquare up --demo demo`: its edge and control API, and the admin token."""

    svc: Service
    edge: str
    control: str
    token: str = ADMIN_TOKEN

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@contextmanager
def demo_stack(tmp: Path) -> Iterator[DemoStack]:
    """`townsquare up --demo demo` on free ports, until the demo room plays through the edge."""
    control, origin = free_port_with((10, 20)), free_port_with((101, 102, 103))
    edge, rtmp = free_port(), free_port_with((1, 2))
    args = ["up", "--demo", DEMO, "--data", str(tmp / "data"),
            "--control-port", str(control), "--origin-port", str(origin),
            "--edge-port", str(edge), "--rtmp-port", str(rtmp)]
    with running(args, tmp / "up.log", f"http://127.0.0.1:{origin}/healthz",
                 env={"TOWNSQUARE_ADMIN_TOKEN": ADMIN_TOKEN}) as svc:
        stack = DemoStack(svc, f"http://127.0.0.1:{edge}", f"http://127.0.0.1:{control}")
        wait_http(f"{stack.edge}/live/{DEMO}/master.m3u8", 60, svc.proc)
        yield stack


def shoot(browser: Any, edge: str, out: Path) -> list[Path]:
    """The three screenshots; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []
    page = browser.new_page(viewport=DESKTOP)
    try:
        page.goto(f"{edge}/")
        # The registry learns the speakers' names within seconds of the room going live.
        page.wait_for_selector(f'#live li[data-room="{DEMO}"]:not([data-speakers="0"])',
                               timeout=30_000)
        shots.append(out / "directory.png")
        page.screenshot(path=str(shots[-1]))
        page.goto(f"{edge}/listen/{DEMO}")
        page.wait_for_function(PLAYING_AND_TALKING, timeout=30_000)
        page.wait_for_function("() => window.townsquare.sound > -60", timeout=10_000)
        shots.append(out / "listener.png")
        page.screenshot(path=str(shots[-1]))
    finally:
        page.close()
    phone = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True,
                                has_touch=True)
    try:
        page = phone.new_page()
        page.goto(f"{edge}/listen/{DEMO}")
        page.wait_for_function(PLAYING_AND_TALKING, timeout=30_000)
        shots.append(out / "listener-phone.png")
        page.screenshot(path=str(shots[-1]))
    finally:
        phone.close()
    return shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--edge", help="an edge already serving a live demo room")
    args = parser.parse_args()
    if args.edge:
        httpx.get(f"{args.edge}/live/{DEMO}/master.m3u8").raise_for_status()
        with chromium() as browser:
            shots = shoot(browser, args.edge.rstrip("/"), args.out)
    else:
        with tempfile.TemporaryDirectory(prefix="townsquare-shots-") as tmp, \
                demo_stack(Path(tmp)) as stack, chromium() as browser:
            shots = shoot(browser, stack.edge, args.out)
    for path in shots:
        print(path)


if __name__ == "__main__":
    main()
