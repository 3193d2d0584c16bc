"""Settings for the packager and the origin (environment prefix `TOWNSQUARE_`).

Each field carries its default and, where it is not obvious, why that default.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from packager.ladder import DEFAULT_LADDER, Rendition, parse_ladder


class StoreSettings(BaseSettings):
    """Where parts, segments, playlists and recordings are kept."""

    model_config = SettingsConfigDict(env_prefix="TOWNSQUARE_", extra="ignore")

    # Local folder used when no bucket is configured: the laptop default.
    data_dir: Path = Path("./townsquare-data")
    # Setting a bucket switches the store to S3 (credentials from the usual AWS chain).
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_prefix: str = ""
    s3_region: str | None = None
    # A store write that fails is retried with exponential backoff up to this delay.
    store_retry_max_seconds: float = 5.0


class PackagerSettings(StoreSettings):
    """How broadcasts are encoded, cut and published."""

    # name:codec:kbps:channels, comma separated; every rendition is 48 kHz so that
    # segment boundaries line up (1024- and 960-sample frames meet every 15 360 samples).
    ladder: str = Field(default=DEFAULT_LADDER)
    # 15 segments of 1.92 s ≈ 29 s live window: ≥ 6 target durations so that delta
    # updates (CAN-SKIP-UNTIL = 6 × TD) have something to skip.
    live_window_segments: int = 15
    # Segment length in units of 15 360 samples (320 ms); 6 → 1.92 s ≤ the 2 s ceiling.
    segment_units: int = 6
    # Write each broadcast's playlist state (`state.json`, ~30 KB) with every batch of parts
    # so that an origin in another process can follow it. An origin in the packager's own
    # process (the deployed layout) does not need it: turning it off saves ~13 PUTs/s a room.
    publish_state: bool = True

    @field_validator("live_window_segments")
    @classmethod
    def _window_long_enough(cls, v: int) -> int:
        if v < 7:
            raise ValueError("LL-HLS delta updates need a live window of at least 7 segments")
        return v

    @field_validator("segment_units")
    @classmethod
    def _segment_bounds(cls, v: int) -> int:
        if not 1 <= v <= 6:
            raise ValueError("segment_units must be 1..6 (segments ≤ 2 s)")
        return v

    def renditions(self) -> list[Rendition]:
        return parse_ladder(self.ladder)


class OriginSettings(StoreSettings):
    """The origin HTTP service."""

    host: str = "127.0.0.1"
    origin_port: int = 8001
    # How often a standalone origin (no packager in its process) re-reads live state.
    origin_poll_seconds: float = 0.05
