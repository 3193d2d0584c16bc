"""Room names: the one rule every service checks the same way."""

from __future__ import annotations

import re

ROOM_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
_ROOM_RE = re.compile(ROOM_PATTERN)


class InvalidRoomName(ValueError):
    """A room name that does not match ROOM_PATTERN."""


def is_valid_room(name: str) -> bool:
    return bool(_ROOM_RE.fullmatch(name))


def check_room(name: str) -> str:
    if not is_valid_room(name):
        raise InvalidRoomName(
            f"room name {name!r} must match {ROOM_PATTERN} (lowercase letters, digits, dashes)"
        )
    return name
