"""Real processes for tests: free ports, `townsquare` subcommands started and stopped cleanly."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from serving.threads import stat_cpu_seconds


# Ports handed to servers the tests start. They come from below the kernel's ephemeral range
# (32768-60999 by default), never from it: a port the kernel picked for `bind(0)` was free
# when it was picked, but the kernel may give it to any outgoing connection of any process
# before the server binds it (a stack under test once failed with "address already in use"
# that way). Each pytest-xdist worker draws from a slice of its own, and a process never
# hands out the same port twice.
def _ports() -> range:
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    return range(12_000, max(min(ephemeral, 32_000), 16_000))


PORTS = _ports()
_given: set[int] = set()


def _slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...; "" outside xdist
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2:
        return PORTS
    width = len(PORTS) // count
    start = PORTS.start + int(worker[2:]) % count * width
    return range(start, start + width)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on, for a server a test is about to start."""
    ports = _slice()
    rng = random.Random()
    for _ in range(1000):
        port = rng.choice(ports[:-200])  # room above it for free_port_with's neighbours
        if port not in _given and _bindable(port):
            _given.add(port)
            return port
    raise RuntimeError(f"no free port in {ports}")


def free_port_with(offsets: tuple[int, ...]) -> int:
    """A free port p with p + offset free too for every offset: `up --nodes` derives the
    other nodes' ports from the ones it is given (control + 10, origin + 101.., RTMP + 1)."""
    for _ in range(200):
        base = free_port()
        if all(base + off not in _given and _bindable(base + off) for off in offsets):
            _given.update(base + off for off in offsets)
            return base
    raise RuntimeError(f"no free port with free neighbours at {offsets}")


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until `url` answers 200; fail early if `proc` dies."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s ({last})")


class Service:
    """A `townsquare` subprocess with its log captured to a file."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None):
        self.args = list(args)
        self.log = log
        full_env = {**os.environ, **(env or {})}
        self._logf = open(log, "ab")
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            [sys.executable, "-m", "townsquare", *self.args],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.alive():
            self.signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(5)
        self._logf.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running(
    args: Sequence[str], log: Path, health: str | None, env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Iterator[Service]:
    svc = Service(args, log, env)
    try:
        if health:
            try:
                wait_http(health, timeout, svc.proc)
            except Exception as exc:
                svc.stop()
                raise RuntimeError(f"{args} did not come up: {exc}\n{svc.output()[-3000:]}") from exc
        yield svc
    finally:
        svc.stop()


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (whichever of its threads forked them), read from
    each process's parent in /proc."""
    below: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # gone since the listing
            below.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += below.get(p, [])
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes, every thread; one that has gone adds 0."""
    total = 0.0
    for pid in pids:
        try:
            total += stat_cpu_seconds(f"/proc/{pid}/stat")
        except OSError:
            continue
    return total
