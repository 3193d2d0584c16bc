"""Settings for the edge cache (environment prefix `TOWNSQUARE_`).

Each field carries its default and, where it is not obvious, why that default.
"""

from __future__ import annotations

import secrets

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hls.audience import valid_reporter
from hls.tokens import KeyRing


class EdgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOWNSQUARE_", extra="ignore")

    host: str = "127.0.0.1"
    edge_port: int = 8080
    # The origin, or another edge acting as a shield.
    edge_upstream: str = "http://127.0.0.1:8001"
    # Bound on everything cached: the LRU, pinned live playlists and negative answers.
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
    # A client that takes none of its pending answers for this long is cut off (slow readers).
    edge_send_timeout: float = 30.0
    # Consecutive upstream failures that open the circuit, and its backoff range.
    edge_breaker_failures: int = 3
    edge_breaker_backoff_min: float = 0.5
    edge_breaker_backoff_max: float = 8.0
    # Rooms whose failures are remembered (one breaker each, least recently failed forgotten).
    edge_breaker_rooms: int = 1024
    # Upstream requests one room may have in flight: a stalled room holds at most this many
    # pooled connections, so it cannot starve the other rooms of edge_upstream_connections.
    # A busy room needs one per distinct key in flight (blocking keys per rendition and
    # position, with and without skip, hinted parts): 32 leaves it room to spare.
    edge_room_flights: int = 32
    # Negative answers (4xx/5xx) live in their own LRU, so a flood of misses cannot evict good
    # entries; its bytes count against edge_cache_bytes (at most an eighth of it).
    edge_negative_cache_bytes: int = 4 * 1024 * 1024
    # ... and are kept at most this long, or the upstream's lifetime when that is shorter.
    edge_negative_seconds: float = 2.0
    # Distinct clients asking for a room's playlists within this window count as its listeners.
    edge_listener_window: float = 30.0
    # A pinned live playlist not refreshed for this long is dropped (its room has gone).
    edge_pin_seconds: float = 600.0

    # Audience reports (`hls.audience`): this edge's name upstream (a fresh random one each
    # start by default: a restarted edge's old report simply ages out); whether it takes the
    # reports of edges below it (a shield only: on an edge listeners reach, any client could
    # claim an audience; without it such requests count as listeners like any other); and
    # the bounds on the reports kept: rooms, child edges per room.
    edge_id: str = Field(default_factory=lambda: secrets.token_hex(6))
    edge_accept_reports: bool = False
    edge_report_rooms: int = 4096
    edge_report_children: int = 1024

    # Private rooms (`edge.access`): the ring listener tokens are checked with, the same
    # `kid:base64secret,...` as the control API's; the clock skew a token's expiry allows; and,
    # for a shield only (never an edge listeners reach), trust in token-less /private/ paths.
    listener_token_keys: str = ""
    edge_token_skew_seconds: float = Field(default=30.0, ge=0, le=300)
    edge_private_trust_tokenless: bool = False

    @field_validator("listener_token_keys")
    @classmethod
    def _ring(cls, v: str) -> str:
        KeyRing.parse(v)  # KeyRingError (a ValueError) names the bad entry, never a secret
        return v

    @field_validator("edge_cache_bytes")
    @classmethod
    def _cache_positive(cls, v: int) -> int:
        if v < 64 * 1024:
            raise ValueError("edge_cache_bytes must be at least 64 KiB")
        return v

    @field_validator("edge_id")
    @classmethod
    def _edge_id(cls, v: str) -> str:
        if not valid_reporter(v):
            raise ValueError("edge_id must be 1..64 letters, digits, '.', '_' or '-'")
        return v

    @field_validator("edge_room_flights", "edge_breaker_rooms", "edge_report_rooms",
                     "edge_report_children")
    @classmethod
    def _at_least_one(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1")
        return v

    @field_validator("edge_negative_seconds")
    @classmethod
    def _negative_short(cls, v: float) -> float:
        if not 0 <= v <= 2:
            raise ValueError("edge_negative_seconds must be within 0..2: a refusal may turn "
                             "into a real object (a new room, a new part) soon")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> EdgeSettings:
        if self.edge_upstream_timeout <= 3 * self.edge_target_duration:
            raise ValueError(
                "edge_upstream_timeout must exceed 3 × target duration: a blocking playlist "
                "request may be held that long by the origin"
            )
        if self.edge_room_flights > self.edge_upstream_connections:
            raise ValueError(
                "edge_room_flights must not exceed edge_upstream_connections: one room could "
                "otherwise hold every upstream connection"
            )
        return self
