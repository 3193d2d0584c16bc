"""A circuit breaker with exponential backoff, so an origin in trouble is not hammered."""

from __future__ import annotations

import random
import time
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

    def _set_state(self, state: str) -> None:
        self.state = state
