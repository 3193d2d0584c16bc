"""Settings for the edge cache (environment prefix `TOWNSQUARE_`).

Each field carries its default and, where it is not obvious, why that default.
"""

from __future__ import annotations

from pydantic import field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class EdgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOWNSQUARE_", extra="ignore")

    host: str = "127.0.0.1"
    edge_port: int = 8080
    # The origin, or another edge acting as a shield.
    edge_upstream: str = "http://127.0.0.1:8001"
    # LRU bound on cached bodies; live playlists are kept outside it.
    edge_cache_bytes: int = 256 * 1024 * 1024
    # Target duration assumed until a playlist says otherwise; Appendix B lifetimes scale with it.
    edge_target_duration: float = 2.0
    # Upstream answers may legitimately take 3 × TD (blocking reload), so the timeout must exceed it.
    edge_upstream_timeout: float = 10.0
    edge_upstream_connect_timeout: float = 2.0
    # Connections to the upstream: one per distinct in-flight key, never one per listener.
    edge_upstream_connections: int = 128
    # Past this many client connections a new one gets a 503 and is closed at once.
    edge_max_connections: int = 20_000
    # Past this many requests waiting on upstream answers a new miss gets a 503.
    edge_max_waiters: int = 50_000
    # Slowloris guards: a request's headers, then its body, must arrive within these.
    edge_header_timeout: float = 10.0
    edge_body_timeout: float = 10.0
    edge_keepalive_timeout: float = 75.0
    # Consecutive upstream failures that open the circuit, and its backoff range.
    edge_breaker_failures: int = 3
    edge_breaker_backoff_min: float = 0.5
    edge_breaker_backoff_max: float = 8.0
    # Distinct clients asking for a room's playlists within this window count as its listeners.
    edge_listener_window: float = 30.0
    # A pinned live playlist not refreshed for this long is dropped (its room has gone).
    edge_pin_seconds: float = 600.0

    @field_validator("edge_cache_bytes")
    @classmethod
    def _cache_positive(cls, v: int) -> int:
        if v < 64 * 1024:
            raise ValueError("edge_cache_bytes must be at least 64 KiB")
        return v

    @model_validator(mode="after")
    def _timeout_covers_blocking(self) -> EdgeSettings:
        if self.edge_upstream_timeout <= 3 * self.edge_target_duration:
            raise ValueError(
                "edge_upstream_timeout must exceed 3 × target duration: a blocking playlist "
                "request may be held that long by the origin"
            )
        return self
