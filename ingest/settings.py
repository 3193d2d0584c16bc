"""Settings for ingest: the control API, RTMP and WHIP (environment prefix `TOWNSQUARE_`)."""

from __future__ import annotations

from pydantic import Field

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
    # Cluster mode: this node's id, unique among the nodes sharing the rooms database (set it
    # to run several). Unset: a single node, no leases.
    node_id: str | None = None
    # A room's lease lasts this long; it is renewed every third of it. A node that cannot
    # renew stops publishing within two thirds of it; another node adopts the room after it.
    lease_seconds: float = Field(default=6.0, ge=1.5)
    # Rooms this node publishes at most; past it, it adopts none and refuses new ones.
    node_capacity: int = Field(default=200, ge=1)
    # Where the origin tier and other nodes reach this node's origin (default: derived from
    # host and origin_port).
    internal_url: str | None = None
