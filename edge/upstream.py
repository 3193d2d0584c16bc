"""The keep-alive HTTP client towards the origin or a shield edge.

httpx.AsyncClient is used rather than a hand-written client: upstream traffic scales with the
number of distinct objects (one request per key per edge, whatever the audience), not with
listeners, so its per-request cost (~0.3 ms) is off the hot path, while its connection pool,
keep-alive and separate connect/read timeouts are exactly what is needed. Its exceptions are
translated into `edge.errors` here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from edge.errors import UpstreamBusy, UpstreamError, UpstreamTimeout, UpstreamUnavailable

KEPT_HEADERS = ("content-type", "cache-control", "age", "date", "etag", "last-modified",
                "retry-after")


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class Upstream:
    """Fetches request targets from one upstream base URL over pooled keep-alive connections."""

    def __init__(
        self, base_url: str, timeout: float, connect_timeout: float, max_connections: int,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            # Waiting for a pooled connection is our own congestion, not the upstream's: give up
            # as soon as a connect would have (UpstreamBusy, which trips no breaker).
            timeout=httpx.Timeout(timeout, connect=connect_timeout, pool=connect_timeout),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            headers={"accept-encoding": "identity", "user-agent": "townsquare-edge"},
            follow_redirects=False,
            trust_env=False,
        )

    async def fetch(self, target: str,
                    headers: dict[str, str] | None = None) -> UpstreamResponse:
        """GET `target`; `headers` are added to the client's own (an audience report)."""
        try:
            r = await self._client.get(self.base_url + target, headers=headers)
            body = r.content
        except httpx.PoolTimeout as exc:
            raise UpstreamBusy(f"no upstream connection free for {target}") from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"upstream timed out on {target}") from exc
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise UpstreamUnavailable(f"upstream failed on {target}: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream error on {target}: {exc!r}") from exc
        headers = {name: r.headers[name] for name in KEPT_HEADERS if name in r.headers}
        return UpstreamResponse(r.status_code, headers, body)

    async def aclose(self) -> None:
        await self._client.aclose()
