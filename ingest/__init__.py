"""Ingest: hosts' audio in, one program per room out to the packager.

    RTMP publishers (OBS, ffmpeg) ─┐
    WHIP publishers (browser page) ─┼─▶ decoder ─▶ jitter buffer ─▶ Mixer ─▶ ProgramClock
    local capture (--source)  ──────┘   (48 kHz)    (per speaker)            └▶ Broadcast.feed

`ingest.service.run(settings, packager)` serves the rooms API, WHIP, the broadcaster page
and RTMP; `ingest.capture.play` feeds one local source straight into a broadcast. Rooms live
in the registry (`ingest.rooms`, written through `ingest.ledger`); in cluster mode
`ingest.node` keeps this node's room leases and `ingest.relay` carries a speaker's audio to
the node that publishes their room. Titles, descriptions and speaker names follow
`ingest.display`; `ingest.presence` writes each live room's audience and speakers to the
registry for the directory of rooms.
"""
