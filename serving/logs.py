"""How every townsquare process writes its log: plain text lines by default, one JSON object a
line with `TOWNSQUARE_LOG_FORMAT=json` (for Loki, CloudWatch, Elasticsearch and friends).

A JSON line holds `time` (UTC, milliseconds), `level`, `logger` and `message`; then the
process's own fields (`service`, `pid`, and `node` when `TOWNSQUARE_NODE_ID` is set); then any
field a call site passes with `extra=` (`room`, `broadcast`, `speaker`, ...); `exception`
carries a traceback when there is one.

Written on the standard library: the formatter is thirty lines, and python-json-logger or
structlog would add a dependency (and, for structlog, a second logging API) for no field we
lack. Children that `townsquare up` spawns inherit the environment and so the format.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; whatever else a record carries came from `extra=`.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


class LogSettings(BaseSettings):
    """The log format every command shares (`TOWNSQUARE_LOG_FORMAT`); the level is the
    `--log-level` flag, whose default is `TOWNSQUARE_LOG_LEVEL`."""

    model_config = SettingsConfigDict(env_prefix="TOWNSQUARE_", extra="ignore")

    # text for people at a terminal (the default), json for a log pipeline.
    log_format: Literal["text", "json"] = "text"


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def __init__(self, fields: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.fields,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(service: str, level: str = "INFO",
                      settings: LogSettings | None = None) -> LogSettings:
    """Send every log record of this process to stderr in the configured format, once, at start.

    A bad setting raises `SystemExit` with a message naming it, before anything else runs.
    """
    if settings is None:
        try:
            settings = LogSettings()
        except ValidationError as exc:
            problems = "; ".join(f"TOWNSQUARE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                                 for e in exc.errors())
            raise SystemExit(f"townsquare: bad log setting: {problems}") from None
    chosen = level.upper()
    if not isinstance(logging.getLevelName(chosen), int):
        raise SystemExit(f"townsquare: unknown log level {chosen!r} "
                         "(DEBUG, INFO, WARNING, ERROR or CRITICAL)")
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        fields: dict[str, Any] = {"service": service, "pid": os.getpid()}
        if node := os.environ.get("TOWNSQUARE_NODE_ID"):
            fields["node"] = node
        handler.setFormatter(JsonLineFormatter(fields))
        # Python warnings and uncaught exceptions would otherwise reach stderr as bare text.
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=chosen, handlers=[handler], force=True)
    return settings


def _log_uncaught(kind: type[BaseException], exc: BaseException,
                  tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("townsquare").critical("uncaught exception", exc_info=(kind, exc, tb))


__all__ = ["TEXT_FORMAT", "JsonLineFormatter", "LogSettings", "configure_logging"]
