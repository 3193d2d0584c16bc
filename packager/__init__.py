"""Packager: one room's program audio in, LL-HLS objects and live state out.

    Broadcast.feed (PCM) ─▶ RenditionEncoder (cmaf, PyAV) ─▶ parts, segments (boxes)
                                    │
                     PlaylistBuilder (playlist) ─▶ LiveRoom (live) ─▶ origin (HTTP)
                                    └──────────▶ StoreWriter (store) ─▶ folder or S3

`pipeline.Packager` starts broadcasts; `origin.build_app` serves them. Object names come
from `hls.names`, directive parsing and lifetimes from `hls`. Beside the media, the origin
serves each room's status object (`status`: title, state, who speaks, audience, composed at
most once a second) and the directory of public rooms (`roomlist`, read from the registry).
"""
