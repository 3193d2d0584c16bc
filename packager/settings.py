"""Settings for the packager and the origin (environment prefix `TOWNSQUARE_`).

Each field carries its default and, where it is not obvious, why that default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, field_validator, model_validator
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
    # Objects waiting for the store are held in memory up to this many bytes; the rest is
    # spilled to disk. A room writes ~52 kB/s (its ladder's parts, then the same audio again
    # as segments), so 64 MiB holds ~20 min of one room or ~13 s of a hundred: a short S3
    # blip never touches the disk, a long outage cannot exhaust memory.
    store_memory_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    # Where objects that do not fit in memory (or are still unsent at shutdown) wait; they
    # are uploaded by the next run. None → `{data_dir}/spill`. Keep it on a disk that
    # survives a restart, and give each process its own.
    store_spill_dir: Path | None = None
    # Ending a broadcast or stopping the process waits this long for the store, then spills
    # what is left: long enough for a healthy S3 to take a backlog of a few seconds, short
    # enough that shutdown during an outage is not killed by a supervisor (systemd, ECS and
    # Kubernetes all allow ≥ 30 s).
    store_drain_seconds: float = Field(default=10.0, ge=0)
    # Uploads in flight at once: S3 latency (~30 ms a PUT), not bandwidth, bounds a writer.
    # 8 carry ~250 objects/s, a dozen rooms at ~20 objects/s each; raise it for more rooms.
    # The S3 client gets twice as many threads, so origin reads never queue behind writes.
    store_concurrency: int = Field(default=8, ge=1)


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
    # EXT-X-START:TIME-OFFSET on live playlists, in target durations before the end, for
    # players that ignore parts and would begin further back. 3 is the nearest the draft
    # allows a live playlist (§4.4.2.2, the same floor as HOLD-BACK). Off (0) by default:
    # hls.js and video.js honour the tag too and then play 6 s behind instead of ~1.5 s
    # (measured 7.2 s and 10 s through an edge), and VLC 3.0.24 ignores it (it began 8
    # segments back, its own 15 s live delay, with the tag and without).
    live_start_target_durations: float = Field(default=0.0, ge=0)
    # Write each broadcast's playlist state (`state.json`, ~30 KB) with every batch of parts,
    # about 8 times a second a room, so that an origin in another process (`townsquare
    # origin` without --demo) can follow it. Unset, a packager on its own writes it and one
    # with an origin in its process does not (`townsquare up`, `townsquare ingest`, the
    # cluster's nodes: their origin serves the rooms from memory and nobody reads the file);
    # true or false decides for every layout.
    publish_state: bool | None = None

    @field_validator("live_window_segments")
    @classmethod
    def _window_long_enough(cls, v: int) -> int:
        if v < 7:
            raise ValueError("LL-HLS delta updates need a live window of at least 7 segments")
        return v

    @field_validator("live_start_target_durations")
    @classmethod
    def _start_far_enough(cls, v: float) -> float:
        if 0 < v < 3:
            raise ValueError("live_start_target_durations must be 0 (no EXT-X-START) or at "
                             "least 3: a live start point nearer the end than 3 target "
                             "durations leaves players without parts nothing to buffer")
        return v

    @field_validator("segment_units")
    @classmethod
    def _segment_bounds(cls, v: int) -> int:
        if not 1 <= v <= 6:
            raise ValueError("segment_units must be 1..6 (segments ≤ 2 s)")
        return v

    def renditions(self) -> list[Rendition]:
        return parse_ladder(self.ladder)

    @property
    def writes_state(self) -> bool:
        """Whether broadcasts write `state.json` (unset: yes, as a packager on its own)."""
        return self.publish_state is not False

    def beside_origin(self) -> Self:
        """These settings for a packager whose rooms an origin in its own process serves
        from memory: the state is written only if `publish_state` asks for it."""
        if self.publish_state is not None:
            return self
        return self.model_copy(update={"publish_state": False})


class OriginSettings(StoreSettings):
    """The origin HTTP service."""

    host: str = "127.0.0.1"
    origin_port: int = 8001
    # How often a standalone origin (no packager in its process) re-reads live state.
    origin_poll_seconds: float = 0.05
    # The rooms database (postgresql://…) that says which rooms are private, their status
    # and the directory. Unset means the SQLite file in the data folder, which only a single
    # machine can share; a standalone origin without either serves every room as public.
    database_url: str | None = None


# Segments are at most 2 s (`segment_units` ≤ 6), so an origin holds a blocking request ≤ 6 s.
MAX_TARGET_DURATION = 2


class TierSettings(OriginSettings):
    """The origin tier: the store settings of the origin, plus where owners are found."""

    # `database_url`: the rooms database the ingest nodes hold their leases in.
    # A room's owner is looked up at most once per this, per replica, however many requests:
    # a failover is noticed sooner anyway, as the old owner stops answering.
    tier_owner_cache_seconds: float = Field(default=1.0, gt=0)
    # The owner may hold a blocking request 3 × target duration (6 s), more while its room is
    # resuming; the forward must outlast that.
    tier_forward_timeout_seconds: float = 15.0
    # How long a blocking request waits for a room's new owner before a 503: long enough for a
    # node to take the room and cut its first part, short of players' playlist timeouts (10 s).
    tier_failover_wait_seconds: float = Field(default=6.0, gt=0)
    # Connections to all owners at once. Each held request takes one for up to 6 s: allow
    # about two per rendition of every room a replica serves (256 ≈ 40 three-rendition rooms).
    tier_max_connections: int = Field(default=256, ge=1)
    # Rooms whose owner a replica remembers (~200 bytes each); the least recently asked go.
    tier_owner_cache_rooms: int = Field(default=10_000, ge=1)

    @model_validator(mode="after")
    def _forward_outlasts_blocking(self) -> TierSettings:
        if self.tier_forward_timeout_seconds <= 3 * MAX_TARGET_DURATION:
            raise ValueError(
                f"tier_forward_timeout_seconds must exceed 3 × target duration "
                f"({3 * MAX_TARGET_DURATION} s): an owner holds a blocking request that long"
            )
        return self
