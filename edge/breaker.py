"""Circuit breakers with exponential backoff, one per room, so an origin in trouble is not
hammered and one room's trouble is not every room's.

`BreakerTable` keeps a breaker only for rooms that have failed lately (a healthy room costs
nothing) in a bounded LRU: a flood of room names cannot grow it, and forgetting the oldest
entry only means that room is tried again.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    """Opens after `failures` consecutive upstream failures; lets one probe through per backoff.

    While open, callers fall back at once (stale copy or 503). Each failed probe doubles the
    backoff up to `backoff_max`; one success closes the circuit and resets it.
    """

    def __init__(
        self,
        failures: int = 3,
        backoff_min: float = 0.5,
        backoff_max: float = 8.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = failures
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.clock = clock
        self.state = CLOSED
        self.trips = 0
        self._failures = 0
        self._backoff = backoff_min
        self._retry_at = 0.0

    def allow(self) -> bool:
        """Whether a request may go upstream now (in half-open state only the single probe)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self.clock() >= self._retry_at:
            self._set_state(HALF_OPEN)
            return True
        return False

    def retry_after(self) -> float:
        return max(0.0, self._retry_at - self.clock())

    def success(self) -> None:
        self._failures = 0
        self._backoff = self.backoff_min
        if self.state != CLOSED:
            self._set_state(CLOSED)

    def failure(self) -> None:
        self._failures += 1
        if self.state == HALF_OPEN or (self.state == CLOSED and self._failures >= self.threshold):
            # Jitter keeps a fleet of edges from probing the origin in lockstep.
            delay = self._backoff * random.uniform(0.8, 1.2)
            self._retry_at = self.clock() + delay
            self._backoff = min(self.backoff_max, self._backoff * 2)
            self.trips += 1
            self._set_state(OPEN)

    def inconclusive(self) -> None:
        """A request that proved nothing about the upstream (the edge's own pool was full):
        a probe in flight gives its turn to the next request instead of holding the circuit."""
        if self.state == HALF_OPEN:
            self._retry_at = self.clock()
            self._set_state(OPEN)

    def _set_state(self, state: str) -> None:
        self.state = state


class BreakerTable:
    """One `CircuitBreaker` per room, created on a room's first failure, at most `max_rooms`."""

    def __init__(
        self,
        failures: int = 3,
        backoff_min: float = 0.5,
        backoff_max: float = 8.0,
        max_rooms: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._make: Callable[[], CircuitBreaker] = lambda: CircuitBreaker(
            failures, backoff_min, backoff_max, clock)
        self.max_rooms = max_rooms
        self.trips = 0  # circuits opened so far, in every room (including forgotten ones)
        self.forgotten = 0
        self._rooms: OrderedDict[str, CircuitBreaker] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rooms)

    def allow(self, room: str) -> bool:
        b = self._rooms.get(room)
        if b is None:
            return True
        self._rooms.move_to_end(room)
        return b.allow()

    def state(self, room: str) -> str:
        b = self._rooms.get(room)
        return CLOSED if b is None else b.state

    def retry_after(self, room: str) -> float:
        b = self._rooms.get(room)
        return 0.0 if b is None else b.retry_after()

    def success(self, room: str) -> None:
        b = self._rooms.pop(room, None)
        if b is not None:
            b.success()  # a closed, reset breaker is the same as none at all

    def failure(self, room: str) -> None:
        b = self._rooms.get(room)
        if b is None:
            if len(self._rooms) >= self.max_rooms:
                self._rooms.popitem(last=False)
                self.forgotten += 1
            b = self._rooms[room] = self._make()
        else:
            self._rooms.move_to_end(room)
        before = b.trips
        b.failure()
        self.trips += b.trips - before

    def inconclusive(self, room: str) -> None:
        b = self._rooms.get(room)
        if b is not None:
            b.inconclusive()

    def open_count(self) -> int:
        """Rooms whose circuit is open or half-open (read at scrape time)."""
        return sum(1 for b in self._rooms.values() if b.state != CLOSED)
