"""Settings for ingest: the control API, RTMP and WHIP (environment prefix `TOWNSQUARE_`)."""

from __future__ import annotations

from packager.settings import PackagerSettings


class IngestSettings(PackagerSettings):
    host: str = "127.0.0.1"
    control_port: int = 8000
    rtmp_port: int = 1935
    # Required by the rooms API; `townsquare up` generates one when unset.
    admin_token: str | None = None
    # A room with no speaker for this long ends by itself (its recording is kept).
    idle_timeout_seconds: float = 600.0
    # The URLs handed out when a room is created; derived from host/ports when unset.
    public_rtmp_url: str | None = None
    public_control_url: str | None = None
    public_edge_url: str | None = None
