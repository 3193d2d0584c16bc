"""What listeners read about a room: its title, its description and its speakers' names.

One place holds the rules, for the rooms API, WHIP's `?name=`, RTMP's `?name=` on the stream key
and relays between nodes: bounded lengths (the registry's columns hold exactly this much) and
printable text only, since pages and terminals show it as it is. A description may span lines;
titles and names are one line, trimmed. Each check returns the text to keep or raises
`BadText` (a ValueError, which pydantic turns into a 422 naming the field).
"""

from __future__ import annotations

from urllib.parse import parse_qs

TITLE_MAX = 120
DESCRIPTION_MAX = 1000
NAME_MAX = 60


class BadText(ValueError):
    """Text a room or a speaker cannot carry: too long, or not printable."""


def check_title(text: str) -> str:
    return _line("title", text, TITLE_MAX)


def check_description(text: str) -> str:
    text = text.strip()
    _bounded("description", text, DESCRIPTION_MAX)
    if not all(line.isprintable() for line in text.replace("\r\n", "\n").split("\n")):
        raise BadText("description must be printable text (line breaks allowed, no other "
                      "control characters)")
    return text.replace("\r\n", "\n")


def check_speaker_name(text: str) -> str:
    """A speaker's display name; empty means "none given" (a default is used)."""
    return _line("name", text, NAME_MAX)


def default_speaker_name(number: int) -> str:
    """The name of a speaker who gave none: the room's count of speakers so far."""
    return f"Speaker {number}"


def name_in_query(query: str) -> str | None:
    """The display name an RTMP publisher put after its stream key (`KEY?name=Ada`, which OBS
    and ffmpeg send as they are given); None when there is none or it breaks the rules (the
    publisher is heard anyway, under a default name)."""
    try:
        given = parse_qs(query, max_num_fields=8).get("name", [""])[0]
        return check_speaker_name(given) or None
    except ValueError:  # BadText, or more fields than any publisher sends
        return None


def _line(field: str, text: str, limit: int) -> str:
    text = text.strip()
    _bounded(field, text, limit)
    if not text.isprintable():
        raise BadText(f"{field} must be printable text on one line (no control characters)")
    return text


def _bounded(field: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise BadText(f"{field} must be at most {limit} characters (got {len(text)})")
