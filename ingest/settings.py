"""Settings for ingest: the control API, RTMP and WHIP (environment prefix `TOWNSQUARE_`)."""

from __future__ import annotations

from packager.settings import PackagerSettings


class IngestSettings(PackagerSettings):
    host: str = "127.0.0.1"
    control_port: int = 8000
    rtmp_port: int = 1935
    # The origin this process serves beside ingest; rooms hand out its playlist URL.
    origin_port: int = 8001
    # Where rooms, key hashes and epochs live: SQLite in the data folder when unset
    # (`townsquare up` needs nothing), or e.g. postgresql://user:pass@host/db.
    database_url: str | None = None
    # Required by the rooms API; `townsquare up` generates one when unset.
    admin_token: str | None = None
    # A room with no speaker for this long ends by itself (its recording is kept).
    idle_timeout_seconds: float = 600.0
    # The URLs handed out when a room is created; derived from host/ports when unset.
    public_rtmp_url: str | None = None
    public_control_url: str | None = None
    public_edge_url: str | None = None
    # A file or URL looped into a room while nobody is connected (hold music); silence when
    # unset. Decoded once at start, at most `hold_audio_max_seconds` of it (memory bound).
    hold_audio: str | None = None
    hold_audio_max_seconds: float = 120.0
    # Speakers one room mixes at once (each its own RTMP or WHIP connection).
    max_speakers_per_room: int = 16
    # Publisher connections the RTMP port holds at once; more are closed on accept.
    rtmp_max_connections: int = 256
    # Offer 127.0.0.1 as an ICE candidate: browsers on this machine (or in a namespace that
    # only has loopback) can then reach WHIP. Harmless elsewhere: a remote peer's check fails.
    whip_ice_loopback: bool = True
    # STUN/TURN URLs for WHIP's ICE agent, comma separated; none by default (host only).
    whip_ice_servers: str = ""
