"""Settings for the edge cache (environment prefix `TOWNSQUARE_`)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class EdgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOWNSQUARE_", extra="ignore")

    host: str = "127.0.0.1"
    edge_port: int = 8080
    # The origin, or another edge acting as a shield.
    edge_upstream: str = "http://127.0.0.1:8001"
    # LRU bound on cached bodies; live playlists are kept outside it.
    edge_cache_bytes: int = 256 * 1024 * 1024
