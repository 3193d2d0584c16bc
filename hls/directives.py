"""Delivery directives: `_HLS_msn`, `_HLS_part` and `_HLS_skip` (draft §6.2.5).

`parse_query` reads them from a raw query string, ignoring every other parameter, and
`Directives.query` writes them back in one canonical order: the edge keys its cache on that
form and the origin answers it, so both read a request the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

DIRECTIVE_NAMES = ("_HLS_msn", "_HLS_part", "_HLS_skip")
SKIP_VALUES = ("YES", "v2")
# Media sequence numbers are JSON-safe integers; longer strings of digits are no request.
MAX_MSN = 2**53
_MAX_DIGITS = 16


class BadDirective(ValueError):
    """A malformed or contradictory `_HLS_*` parameter (answered with 400)."""


@dataclass(frozen=True, slots=True)
class Directives:
    msn: int | None = None
    part: int | None = None
    skip: str | None = None  # "YES" or "v2"

    @property
    def blocking(self) -> bool:
        return self.msn is not None

    @property
    def empty(self) -> bool:
        return self.msn is None and self.skip is None

    def query(self) -> str:
        """The canonical query string (`_HLS_msn=…&_HLS_part=…&_HLS_skip=…`), '' when empty."""
        params = []
        if self.msn is not None:
            params.append(f"_HLS_msn={self.msn}")
        if self.part is not None:
            params.append(f"_HLS_part={self.part}")
        if self.skip is not None:
            params.append(f"_HLS_skip={self.skip}")
        return "&".join(params)


NONE = Directives()


def _number(name: str, value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > _MAX_DIGITS:
        raise BadDirective(f"{name} must be a non-negative integer, got {value[:40]!r}")
    n = int(value)
    if n > MAX_MSN:
        raise BadDirective(f"{name} out of range: {value}")
    return n


def parse_query(query: str) -> Directives:
    """The directives in a raw query string; BadDirective when one is malformed."""
    if "_HLS_" not in query:
        return NONE
    found: dict[str, str] = {}
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name in DIRECTIVE_NAMES:
            if name in found and found[name] != value:
                raise BadDirective(f"{name} given twice with different values")
            found[name] = value
    if not found:
        return NONE
    msn = _number("_HLS_msn", found["_HLS_msn"]) if "_HLS_msn" in found else None
    part = _number("_HLS_part", found["_HLS_part"]) if "_HLS_part" in found else None
    if part is not None and msn is None:
        raise BadDirective("_HLS_part needs _HLS_msn")
    skip = found.get("_HLS_skip")
    if skip is not None and skip not in SKIP_VALUES:
        raise BadDirective(f"_HLS_skip must be YES or v2, got {skip[:40]!r}")
    return Directives(msn, part, skip)
