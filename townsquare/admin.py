"""`townsquare rooms ...`: the rooms API from a terminal, for operators.

Reads the control URL and admin token from flags or the environment
(`TOWNSQUARE_CONTROL_URL`, default http://127.0.0.1:8000; `TOWNSQUARE_ADMIN_TOKEN`), prints
readable tables (rich) or, with `--json`, the API's own answer. Every failure is one line
that says what to do: the API unreachable, the token refused, no such room.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import httpx

DEFAULT_CONTROL = "http://127.0.0.1:8000"


class AdminError(Exception):
    """A request the command could not complete, in words for the operator."""


def add_parser(sub: Any) -> None:
    rooms = sub.add_parser("rooms", help="create, list, show, edit and end rooms; rotate keys; "
                                         "mute and name speakers (the rooms API from a terminal)")
    rooms.add_argument("--control", default=os.environ.get("TOWNSQUARE_CONTROL_URL",
                                                           DEFAULT_CONTROL),
                       help="control API URL (TOWNSQUARE_CONTROL_URL)")
    rooms.add_argument("--token", default=os.environ.get("TOWNSQUARE_ADMIN_TOKEN"),
                       help="admin token (TOWNSQUARE_ADMIN_TOKEN)")
    rooms.add_argument("--json", dest="as_json", action="store_true",
                       help="print the API's JSON answer")
    act = rooms.add_subparsers(dest="action", required=True)
    create = act.add_parser("create", help="a new room; prints its stream key (shown once)")
    create.add_argument("name", nargs="?")
    create.add_argument("--private", action="store_true",
                        help="listeners need a signed, expiring URL")
    create.add_argument("--title", help="what listeners read first (up to 120 characters)")
    create.add_argument("--description", help="what the room is about (up to 1000)")
    edit = act.add_parser("edit", help="change a room's title or description")
    edit.add_argument("room")
    edit.add_argument("--title")
    edit.add_argument("--description")
    act.add_parser("list", help="every room with its state and speakers")
    for name, text in (("show", "one room in full"), ("end", "end the room (recording kept)"),
                       ("rotate-key", "a new stream key; the old one stops at once"),
                       ("revoke-key", "no key works until the next rotation")):
        act.add_parser(name, help=text).add_argument("room")
    url = act.add_parser("listener-url", help="a signed listener URL for a private room")
    url.add_argument("room")
    url.add_argument("--hours", type=float, default=6.0)
    mute = act.add_parser("mute", help="mute a speaker in the mix (--off to unmute)")
    mute.add_argument("room")
    mute.add_argument("speaker")
    mute.add_argument("--off", action="store_true", help="unmute")
    kick = act.add_parser("remove", help="disconnect a speaker")
    kick.add_argument("room")
    kick.add_argument("speaker")
    rename = act.add_parser("rename", help="give a speaker a display name")
    rename.add_argument("room")
    rename.add_argument("speaker")
    rename.add_argument("speaker_name", metavar="NAME")


def run(args: argparse.Namespace) -> None:
    try:
        answer = _request(args)
    except AdminError as exc:
        raise SystemExit(f"townsquare rooms {args.action}: {exc}") from None
    if args.as_json:
        print(json.dumps(answer, indent=2))
    else:
        _show(args.action, answer)


def _request(args: argparse.Namespace) -> Any:
    if not args.token:
        raise AdminError("no admin token: pass --token or set TOWNSQUARE_ADMIN_TOKEN")
    a = args.action
    calls: dict[str, tuple[str, str, Any]] = {
        "create": ("POST", "/rooms", {"name": getattr(args, "name", None),
                                      "private": getattr(args, "private", False),
                                      **_info(args)}),
        "list": ("GET", "/rooms", None),
    }
    if hasattr(args, "room"):
        r = args.room
        calls.update({
            "show": ("GET", f"/rooms/{r}", None),
            "end": ("POST", f"/rooms/{r}/end", None),
            "rotate-key": ("POST", f"/rooms/{r}/key", None),
            "revoke-key": ("DELETE", f"/rooms/{r}/key", None),
            "listener-url": ("POST", f"/rooms/{r}/listener-urls",
                             {"lifetime_seconds": int(getattr(args, "hours", 6) * 3600)}),
            "edit": ("PATCH", f"/rooms/{r}", _info(args)),
        })
        if hasattr(args, "speaker"):
            calls["mute"] = ("POST", f"/rooms/{r}/speakers/{args.speaker}/mute",
                             {"muted": not getattr(args, "off", False)})
            calls["remove"] = ("DELETE", f"/rooms/{r}/speakers/{args.speaker}", None)
            calls["rename"] = ("PUT", f"/rooms/{r}/speakers/{args.speaker}/name",
                               {"name": getattr(args, "speaker_name", "")})
    method, path, body = calls[a]
    base = args.control.rstrip("/")
    try:
        response = httpx.request(method, base + path, json=body, timeout=30,
                                 headers={"Authorization": f"Bearer {args.token}"})
    except httpx.HTTPError as exc:
        raise AdminError(f"cannot reach the control API at {base} ({exc}); is townsquare "
                         "running, and is --control / TOWNSQUARE_CONTROL_URL right?") from None
    if response.status_code in (401, 403):
        raise AdminError(f"the control API at {base} refused the admin token")
    if response.status_code == 404 and hasattr(args, "room"):
        raise AdminError(f"no room named {args.room!r} (or no speaker {getattr(args, 'speaker', '')!r})"
                         if hasattr(args, "speaker") else f"no room named {args.room!r}")
    if response.status_code >= 400:
        raise AdminError(f"{response.status_code}: {_detail(response)}")
    if response.status_code == 204 or not response.content:
        return {"ok": True}
    return response.json()


def _info(args: argparse.Namespace) -> dict[str, str]:
    """The title and description given on the command line (those left out stay as they are)."""
    return {key: getattr(args, key) for key in ("title", "description")
            if getattr(args, key, None) is not None}


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    if isinstance(detail, list):  # validation errors: say which field and why
        detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'body'}: "
                           f"{e.get('msg', '')}" for e in detail if isinstance(e, dict))
    return str(detail)[:300]


def _show(action: str, answer: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if action == "list":
        t = Table("room", "title", "state", "speakers", "since", "duration", "node", "private")
        for r in answer.get("rooms", []):
            t.add_row(r["name"], r.get("title") or "", r["state"],
                      str(len(r.get("speakers", []))),
                      r.get("started_at") or "-", _duration(r.get("duration_seconds")),
                      r.get("node") or "-", "yes" if r.get("private") else "")
        console.print(t)
        return
    if action == "show":
        t = Table(show_header=False, title=answer.get("name"))
        for key in ("title", "description", "state", "broadcast_id", "started_at", "ended_at",
                    "end_reason",
                    "duration_seconds", "node", "private", "key_generation", "listener_url",
                    "playlist_url"):
            if answer.get(key) not in (None, ""):
                t.add_row(key, str(answer[key]))
        console.print(t)
        speakers = answer.get("speakers", [])
        if speakers:
            s = Table("speaker", "name", "kind", "from", "since", "muted", "level dBFS",
                      "buffer ms")
            for sp in speakers:
                s.add_row(sp["id"], sp.get("name", ""), sp["kind"], sp["remote"],
                          sp["connected_at"],
                          "yes" if sp["muted"] else "", str(sp["level_dbfs"]),
                          str(sp["buffer_ms"]))
            console.print(s)
        return
    t = Table(show_header=False)
    for key, value in (answer.items() if isinstance(answer, dict) else []):
        if not isinstance(value, dict | list):
            t.add_row(key, str(value))
    console.print(t)
    if isinstance(answer, dict) and "stream_key" in answer:
        console.print("the stream key is shown only now: keep it", style="bold")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
