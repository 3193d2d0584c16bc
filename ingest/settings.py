"""Settings for ingest: the control API, RTMP and WHIP (environment prefix `TOWNSQUARE_`)."""

from __future__ import annotations

from pathlib import Path

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
    # Secrets private rooms' listener URLs are signed with, `kid:base64secret,...` (the last
    # signs; `hls.tokens`). Edges check with the same ring. Empty: no private listener URLs.
    listener_token_keys: str = ""
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
    # Publisher connections the RTMP port (and the RTMPS port) hold at once; more are
    # closed on accept.
    rtmp_max_connections: int = Field(default=256, ge=1)
    # Of those, from one address: a studio behind one NAT has a few speakers, not dozens.
    rtmp_max_connections_per_address: int = Field(default=32, ge=1)
    # A whole handshake within this, however slowly its bytes come (slowloris).
    rtmp_handshake_seconds: float = Field(default=10.0, gt=0)
    # From the end of the handshake to an accepted `publish`: OBS and ffmpeg need well under
    # a second; a connection that never publishes is closed then.
    rtmp_publish_seconds: float = Field(default=10.0, gt=0)
    # A publishing connection silent for this long is closed. OBS and ffmpeg send audio every
    # ~21 ms; one whose machine went away (a pulled cable, a sleeping laptop) sends no FIN,
    # and its speaker would stay listed, and counted against the room's speakers, until then.
    rtmp_idle_seconds: float = Field(default=10.0, gt=0)
    # Bytes a connection may send before its stream key is accepted (connect and publish
    # take ~1 KiB); past it the connection is closed, so nobody unauthenticated holds more.
    rtmp_preauth_bytes: int = Field(default=65_536, ge=4096)
    # RTMPS: TLS on its own port (plain RTMP stays on rtmp_port). Unset: no RTMPS. Needs a
    # PEM certificate chain and its key.
    rtmps_port: int | None = None
    rtmps_cert: Path | None = None
    rtmps_key: Path | None = None
    # The control API: requests a second per client address and per bearer token (each a
    # token bucket of `api_burst`); over it, 429 with Retry-After. Health and metrics
    # scrapes and cluster relays are not counted.
    api_rate_per_second: float = Field(default=20.0, gt=0)
    api_burst: int = Field(default=40, ge=1)
    # Request bodies on every route but the cluster relay (SDP offers are a few KiB).
    api_max_body_bytes: int = Field(default=65_536, ge=1024)
    # WHIP sessions at once, in all and from one address.
    whip_max_sessions: int = Field(default=200, ge=1)
    whip_max_sessions_per_address: int = Field(default=16, ge=1)
    # A connected WHIP session whose audio stops this long is closed. A browser sends audio
    # every 20 ms, muted or not; one that vanished (a closed lid, a crashed tab) sends no
    # goodbye, and ICE's consent check would drop it only after 30 s, listed meanwhile.
    whip_idle_seconds: float = Field(default=5.0, gt=0)
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
    # How often the rooms this node publishes have their audience and speaker names written to
    # the registry (only those that changed): how fresh the directory of rooms is.
    presence_seconds: float = Field(default=5.0, ge=0.5)
