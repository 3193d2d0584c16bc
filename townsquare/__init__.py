"""townsquare: live audio rooms whose audience costs the origin nothing.

This package holds what the services share: the command line, room names and the
metrics/health helpers. The services themselves live in `packager`, `edge` and `ingest`.
"""

__version__ = "0.1.0"
