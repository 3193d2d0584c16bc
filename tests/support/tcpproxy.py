"""A TCP proxy for fault drills: one process's link to a server, cut and healed on demand.

    with TcpProxy("127.0.0.1", pg.port) as proxy:   # listens on 127.0.0.1:proxy.port
        ...                                         # point the client at proxy.port
        proxy.cut()                # open connections reset, new ones refused
        proxy.cut("blackhole")     # open connections and new ones go silent (a partition)
        proxy.heal()               # new connections are relayed again
        proxy.close_next(2)        # the next 2 connections close as their request arrives

`refuse` closes every open connection (with a reset) and stops listening, so connecting fails
at once with "connection refused": the server is plainly gone. `blackhole` is the harder
fault, a network partition: nothing is closed, but no byte goes through any more in either
direction, and new connections are accepted and then left silent, so the client learns of it
only through its own timeouts. `heal` closes the connections a black hole held (their streams
lost bytes and cannot be trusted) and relays new connections as before, on the same port.
`close_next` is the smallest fault: a server that lets a connection go (a FIN, nothing sent)
just as a request goes out on it, as S3 does with idle keep-alive connections.

Threads only, no event loop: the test that runs it stays synchronous.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Literal, Self

from tests.support.procs import free_port

CutMode = Literal["refuse", "blackhole"]
POLL = 0.05  # seconds a relay thread waits before it looks at the proxy's state again


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a link that dies does, not a polite FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _close_listener(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes an accept() waiting in another thread
    with contextlib.suppress(OSError):
        sock.close()


class _Pipe:
    """One client connection and its upstream connection, relayed by one thread."""

    def __init__(self, proxy: TcpProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="tcpproxy-pipe")

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        _reset(self.client)
        if self.upstream is not None:
            _reset(self.upstream)

    def _run(self) -> None:
        if self.proxy._take_close():
            self._close_on_first_bytes()
            return
        try:
            self.upstream = socket.create_connection(self.proxy.target, timeout=5)
            self.upstream.setblocking(True)
        except OSError:
            self.close()
            self.proxy._forget(self)
            return
        if self.closed.is_set():  # cut while connecting
            _reset(self.upstream)
            self.proxy._forget(self)
            return
        # The sides still sending. One that closes its end has its FIN passed on (the other
        # side reads what was relayed, then the end), and the other direction goes on: a
        # reset here would throw away an answer its client has not read yet (a server that
        # closes after each answer, as moto does).
        sending = [self.client, self.upstream]
        try:
            while sending and not self.closed.is_set():
                if self.proxy.silent():
                    # A partition: leave both sides' bytes unread, send nothing.
                    time.sleep(POLL)
                    continue
                readable, _, _ = select.select(sending, [], [], POLL)
                if self.proxy.silent():
                    continue
                for src in readable:
                    dst = self.upstream if src is self.client else self.client
                    data = src.recv(65536)
                    if data:
                        dst.sendall(data)
                        continue
                    sending.remove(src)
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):
            pass
        finally:
            if sending or self.closed.is_set():
                self.close()  # cut, or broken: reset both sides
            else:
                self.closed.set()  # both ends closed theirs: close ours politely
                for sock in (self.client, self.upstream):
                    with contextlib.suppress(OSError):
                        sock.close()
            self.proxy._forget(self)

    def _close_on_first_bytes(self) -> None:
        try:
            readable, _, _ = select.select([self.client], [], [], 5.0)
            if readable:
                self.client.recv(65536)
            self.client.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            self.closed.set()
            with contextlib.suppress(OSError):
                self.client.close()
            self.proxy._forget(self)


class TcpProxy:
    """Relays TCP connections from 127.0.0.1:`port` to `host`:`target_port`."""

    def __init__(self, host: str, target_port: int, port: int | None = None) -> None:
        self.target = (host, target_port)
        self.port = port or free_port()
        self.mode: CutMode | None = None  # None: relaying
        self.accepted = 0  # connections accepted since start, relayed or not
        self._pipes: set[_Pipe] = set()
        self._held: list[socket.socket] = []  # accepted in a black hole, never relayed
        self._to_close = 0  # connections still to close on their first bytes (close_next)
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def silent(self) -> bool:
        """A black hole: nothing goes through."""
        return self.mode == "blackhole"

    def open_connections(self) -> int:
        with self._lock:
            return len(self._pipes) + len(self._held)

    # --- control ---------------------------------------------------------------------
    def start(self) -> None:
        self._listen()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name="tcpproxy-accept")
        self._thread.start()

    def cut(self, mode: CutMode = "refuse") -> None:
        """Cut the link (see the module's doc for the two modes)."""
        with self._lock:
            self.mode = mode
            pipes = list(self._pipes)
            if mode == "refuse":
                listener, self._listener = self._listener, None
        if mode == "refuse":
            if listener is not None:
                _close_listener(listener)
            for pipe in pipes:
                pipe.close()

    def close_next(self, count: int = 1) -> None:
        """Close the next `count` connections politely once their first bytes arrive,
        relaying nothing (see the module's doc)."""
        with self._lock:
            self._to_close += count

    def heal(self) -> None:
        """Relay again: connections a black hole held are reset, new ones go through."""
        with self._lock:
            was, self.mode = self.mode, None
            held, self._held = self._held, []
            stalled = list(self._pipes) if was == "blackhole" else []
        for sock in held:
            _reset(sock)
        for pipe in stalled:
            pipe.close()
        if self._listener is None:
            self._listen()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            listener, self._listener = self._listener, None
            pipes, held = list(self._pipes), self._held
            self._held = []
        if listener is not None:
            _close_listener(listener)
        for pipe in pipes:
            pipe.close()
        for sock in held:
            _reset(sock)
        if self._thread is not None:
            self._thread.join(5)

    # --- internals -------------------------------------------------------------------
    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 5
        while True:
            try:
                sock.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    sock.close()
                    raise
                time.sleep(0.05)
        sock.listen(64)
        sock.settimeout(POLL)
        with self._lock:
            self._listener = sock

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                listener = self._listener
            if listener is None:
                time.sleep(POLL)
                continue
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by cut() meanwhile
                time.sleep(POLL)
                continue
            client.setblocking(True)
            with self._lock:
                self.accepted += 1
                if self.mode == "refuse":  # accepted just before the listener closed
                    _reset(client)
                    continue
                if self.mode == "blackhole":
                    self._held.append(client)
                    continue
                pipe = _Pipe(self, client)
                self._pipes.add(pipe)
            pipe.thread.start()

    def _take_close(self) -> bool:
        with self._lock:
            if self._to_close <= 0:
                return False
            self._to_close -= 1
            return True

    def _forget(self, pipe: _Pipe) -> None:
        with self._lock:
            self._pipes.discard(pipe)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
