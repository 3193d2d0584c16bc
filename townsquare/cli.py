"""The `townsquare` command: `up` runs the whole stack on one machine; `origin`, `edge` and
`ingest` run one service each. Flags override `TOWNSQUARE_*` environment settings."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from hls.names import check_room
from townsquare import admin
from serving.logs import configure_logging

log = logging.getLogger("townsquare")


def _overrides(args: argparse.Namespace, mapping: dict[str, str]) -> dict[str, Any]:
    return {field: getattr(args, attr) for attr, field in mapping.items()
            if getattr(args, attr, None) is not None}


def _add_store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, help="local storage folder (default ./townsquare-data)")
    p.add_argument("--s3-bucket", help="store in this S3 bucket instead of a folder")
    p.add_argument("--s3-endpoint-url", help="S3-compatible endpoint (default: AWS)")
    p.add_argument("--s3-prefix", help="key prefix inside the bucket")


def _demo_room(value: str) -> str:
    try:
        return check_room(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="townsquare", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("TOWNSQUARE_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run ingest, origin and edge on this machine")
    up.add_argument("--host", help="listen address (default 127.0.0.1; 0.0.0.0 for all)")
    up.add_argument("--demo", type=_demo_room, metavar="ROOM",
                    help="also broadcast a generated test signal into ROOM")
    up.add_argument("--control-port", type=int)
    up.add_argument("--origin-port", type=int)
    up.add_argument("--edge-port", type=int)
    up.add_argument("--rtmp-port", type=int)
    up.add_argument("--rtmps-port", type=int, help="also take RTMPS (TLS) here; needs "
                    "TOWNSQUARE_RTMPS_CERT and TOWNSQUARE_RTMPS_KEY")
    up.add_argument("--no-edge", action="store_true", help="do not start the edge")
    up.add_argument("--nodes", type=int, default=1, metavar="N",
                    help="run N ingest nodes sharing the rooms database and store, behind an "
                         "origin tier on the origin port (node i: RTMP 1935+i-1)")
    _add_store_flags(up)

    origin = sub.add_parser("origin", help="serve live playlists and media from the store")
    origin.add_argument("--host")
    origin.add_argument("--port", type=int, dest="origin_port")
    origin.add_argument("--demo", type=_demo_room, metavar="ROOM",
                        help="run a packager in this process broadcasting a test signal into ROOM")
    _add_store_flags(origin)

    edge = sub.add_parser("edge", help="run a caching edge in front of an origin or another edge")
    edge.add_argument("--upstream", help="origin or shield URL (default http://127.0.0.1:8001)")
    edge.add_argument("--host")
    edge.add_argument("--port", type=int, dest="edge_port")
    edge.add_argument("--cache-bytes", type=int)

    ingest = sub.add_parser("ingest", help="run the control API, RTMP and WHIP with the origin, "
                                           "or (with --room) broadcast a local source")
    ingest.add_argument("--host")
    ingest.add_argument("--control-port", type=int)
    ingest.add_argument("--origin-port", type=int)
    ingest.add_argument("--rtmp-port", type=int)
    ingest.add_argument("--rtmps-port", type=int, help="also take RTMPS (TLS) here; needs "
                        "TOWNSQUARE_RTMPS_CERT and TOWNSQUARE_RTMPS_KEY")
    ingest.add_argument("--room", type=_demo_room, help="broadcast --source into this room")
    ingest.add_argument("--source", default="tone",
                        help="with --room: 'tone', 'mic', a file or a URL (default tone)")
    ingest.add_argument("--seconds", type=float, help="with --room: stop after this long")
    _add_store_flags(ingest)

    tier = sub.add_parser("tier", help="run a stateless origin replica that forwards live "
                                       "requests to each room's owner (a cluster of ingest nodes)")
    tier.add_argument("--host")
    tier.add_argument("--port", type=int, dest="origin_port")
    _add_store_flags(tier)

    repair = sub.add_parser("repair", help="rebuild a room's recording from the objects in the "
                                           "store (after a crash); safe to repeat")
    repair.add_argument("room", type=_demo_room)
    repair.add_argument("--broadcast", help="which broadcast (default: the room's last)")
    repair.add_argument("--end", action="store_true",
                        help="also close the recording (ENDLIST) if the room will not resume")
    _add_store_flags(repair)

    load = sub.add_parser("loadtest", help="simulated LL-HLS listeners against an edge, with a "
                                           "live display and a JSON summary")
    load.add_argument("--url", required=True,
                      help="the room's multivariant playlist on the edge, e.g. "
                           "http://127.0.0.1:8080/live/demo/master.m3u8")
    load.add_argument("--listeners", type=int, default=100)
    load.add_argument("--ramp", type=float, default=10.0, help="seconds over which they join")
    load.add_argument("--duration", type=float, default=30.0,
                      help="seconds to run once all have joined")
    load.add_argument("--processes", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                      help="worker processes for the listeners (default: CPUs - 1)")
    load.add_argument("--canary", type=int, default=10,
                      help="listeners in a process of their own, to tell a saturated client "
                           "from a saturated server (0: none)")
    load.add_argument("--json", dest="json_path", help="also write the summary to this file")
    load.add_argument("--quiet", action="store_true", help="no live display")

    admin.add_parser(sub)

    plan = sub.add_parser("plan", help="size a fleet for an audience: edges, shields, origin "
                                       "load, egress and cost per hour")
    plan.add_argument("--listeners", type=int, required=True)
    plan.add_argument("--part-target", type=float,
                      help="seconds per part, every rendition (default: the default ladder's "
                           "parts, 0.213 s for AAC and 0.24 s for Opus)")
    plan.add_argument("--renditions", type=int, help="renditions (default: the ladder's 3)")
    plan.add_argument("--edge-capacity", type=float,
                      help="requests/s one edge process holds (default: the measured figure)")
    plan.add_argument("--bitrate", type=float, default=96.0, help="kbit/s of the rendition "
                                                                 "most listeners play")
    plan.add_argument("--cdn", action="store_true", help="a CDN in front of the edges")
    plan.add_argument("--json", dest="plan_json", action="store_true", help="JSON output")
    return parser


def _plan(args: argparse.Namespace) -> None:
    import json

    from capacity.model import DEFAULT_PARTS, MEASURED_EDGE_RPS, Inputs, PlanError, make_plan

    try:
        ladder = args.part_target is None and args.renditions is None
        p = make_plan(Inputs(args.listeners, part_target=args.part_target or 0.2133,
                             renditions=args.renditions or 3,
                             edge_capacity=args.edge_capacity or MEASURED_EDGE_RPS,
                             parts=DEFAULT_PARTS if ladder else None,
                             bitrate_kbps=args.bitrate, cdn=args.cdn))
    except PlanError as exc:
        raise SystemExit(f"townsquare plan: {exc}") from None
    if args.plan_json:
        print(json.dumps(p.as_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{p.listeners:,} listeners{' behind a CDN' if args.cdn else ''}",
              show_header=False)
    for name, value in (
            ("requests/s per listener", f"{p.requests_per_listener}"),
            ("listener requests/s", f"{p.listener_requests_per_s:,.0f}"),
            ("edge processes (instances)", f"{p.edges:,} ({p.edge_instances:,})"),
            ("shield processes (instances)", f"{p.shields:,} ({p.shield_instances:,})"),
            ("origin requests/s", f"{p.origin_requests_per_s:,.1f}"),
            ("egress", f"{p.egress_gbit_s:,.2f} Gbit/s"),
            ("cost per hour", f"${p.cost_per_hour:,.2f}"),
            *((f"  {k}", f"${v:,.2f}") for k, v in p.cost_breakdown.items())):
        t.add_row(name, value)
    Console().print(t)
    for note in p.notes:
        print(f"note: {note}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging(args.command, args.log_level)
    if args.command == "edge":
        from edge.server import serve
        from edge.settings import EdgeSettings

        serve(EdgeSettings(**_overrides(args, {"upstream": "edge_upstream", "host": "host",
                                               "edge_port": "edge_port",
                                               "cache_bytes": "edge_cache_bytes"})))
        return

    if args.command == "loadtest":
        from loadtest.run import LoadTestError, Plan, run, write_summary

        plan = Plan(args.url, args.listeners, args.ramp, args.duration, args.processes,
                    args.canary)
        try:
            write_summary(run(plan, show=not args.quiet), args.json_path)
        except LoadTestError as exc:
            raise SystemExit(f"townsquare loadtest: {exc}") from None
        return

    if args.command == "plan":
        _plan(args)
        return
    if args.command == "rooms":
        admin.run(args)
        return

    from serving.runner import run_until_signalled

    if args.command == "repair":
        import asyncio

        from townsquare import stack

        asyncio.run(stack.run_repair(args))
        return
    if args.command == "tier":
        from townsquare import stack

        run_until_signalled(lambda stop: stack.run_tier(args, stop))
        return
    if args.command == "origin":
        from townsquare import stack

        run_until_signalled(lambda stop: stack.run_origin(args, stop))
    elif args.command == "ingest" and args.room:
        from townsquare import stack

        run_until_signalled(lambda stop: stack.run_capture(args, stop))
    else:
        from ingest.errors import ConfigError
        from townsquare import stack

        if args.command == "up" and not os.environ.get("TOWNSQUARE_ADMIN_TOKEN"):
            os.environ["TOWNSQUARE_ADMIN_TOKEN"] = secrets.token_urlsafe(24)
        try:
            run_until_signalled(lambda stop: stack.run_stack(args, stop))
        except ConfigError as exc:
            raise SystemExit(f"townsquare {args.command}: {exc}") from None

