"""RTMP ingest: an asyncio server for publishers (OBS, ffmpeg) sending AAC audio.

Why our own server rather than a library. PyAV/ffmpeg's `listen=1` accepts one connection
per listen, takes any stream name and cannot refuse a key. `pyrtmp` (the one maintained
asyncio RTMP library on PyPI) leaves the policy we need to us anyway — refusing a key with
NetStream.Publish.BadName, bounding chunk and message sizes, skipping video without
buffering it — and its parsers are tied to its stream reader, so they cannot be tested on
golden bytes alone. The publishing half of RTMP is small: handshake, chunk stream, six
AMF0 commands and FLV audio tags, each here as a pure module with round-trip tests.
"""
