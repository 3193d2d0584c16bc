"""Errors raised inside the edge.

    EdgeError
    └── UpstreamError         the upstream gave no usable answer
        ├── UpstreamUnavailable   connection refused, reset or closed early
        ├── UpstreamTimeout       no complete answer within the upstream timeout
        ├── UpstreamBusy          not sent: no pooled connection came free in time (our side)
        └── CircuitOpen           not tried: the breaker is open after repeated failures

httpx exceptions are translated into these in `edge.upstream` and never escape it. A malformed
request is `hls.directives.BadDirective`, shared with the origin.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error the edge raises on purpose."""


class UpstreamError(EdgeError):
    """The upstream could not produce an answer."""


class UpstreamUnavailable(UpstreamError):
    """The upstream refused or dropped the connection."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""


class UpstreamBusy(UpstreamError):
    """No connection of the edge's own pool came free in time: says nothing of the upstream."""


class CircuitOpen(UpstreamError):
    """The request was not sent because the circuit breaker is open."""
