"""townsquare: live audio rooms whose audience costs the origin nothing.

This package is the command line and the wiring of processes, nothing else: `cli` parses
the `townsquare` command, `stack` starts the services each command runs. The services live
in `ingest`, `packager` and `edge`; what they share lives below them (`hls`, `serving`).
"""

__version__ = "0.1.0"
