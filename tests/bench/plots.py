"""Plots of the benchmark results: `python -m tests.bench.plots` (the last step of
`python -m tests.bench`). Reads tests/bench/results/*.json, writes PNGs to docs/img/.

One function per figure, each taking a results file as the benchmark wrote it. A file that is
missing, or that holds nothing a figure needs, skips that figure with a line saying why, so
the plots follow whichever benchmarks have run. matplotlib is the `bench` extra of the
project (`pip install -e '.[bench]'`; `./dev bench` installs it).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # after the backend is chosen
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from capacity.model import DEFAULT_PARTS, upstream_rps

RESULTS = Path(__file__).parent / "results"
IMAGES = Path(__file__).parents[2] / "docs" / "img"
DPI = 110


class Skip(Exception):
    """This figure has nothing to draw from the results at hand."""


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return path


def _cdf(ax: Axes, values: Sequence[float], weights: Sequence[float] | None = None,
         **style: Any) -> None:
    """An empirical CDF: `values` (bucket upper bounds when `weights` are counts)."""
    pairs = sorted(zip(values, weights or [1.0] * len(values), strict=True))
    total = sum(w for _, w in pairs) or 1.0
    xs, ys, seen = [], [], 0.0
    for x, w in pairs:
        seen += w
        xs.append(x)
        ys.append(seen / total)
    ax.step(xs, ys, where="post", **style)


# --- offload ------------------------------------------------------------------------------

def offload_curve(offload: dict[str, Any], path: Path) -> Path:
    steps = sorted(offload.get("steps", []), key=lambda s: s["listeners"])
    if not steps:
        raise Skip("no steps")
    n = [s["listeners"] for s in steps]
    origin = [s["origin_requests_per_s"] for s in steps]
    model = steps[0].get("model_requests_per_s") or upstream_rps(1, 3, 0.2133, DEFAULT_PARTS)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    top.axhspan(model * 0.9, model * 1.1, color="tab:green", alpha=0.12,
                label="model ± 10 %")
    top.axhline(model, color="tab:green", lw=1.5, label=f"model: {model:.2f} req/s")
    top.plot(n, origin, "o-", color="tab:blue", lw=2, label="measured at the origin")
    for x, y, s in zip(n, origin, steps, strict=True):
        if s.get("client_saturated"):
            top.annotate("client saturated", (x, y), textcoords="offset points",
                         xytext=(0, -18), ha="center", fontsize=8, color="tab:red")
    top.set_ylim(0, model * 1.4)
    top.set_ylabel("origin requests/s")
    ratio = offload.get("largest_over_smallest")
    top.set_title("Origin load against audience size, one edge"
                  + (f" (largest / smallest = {ratio})" if ratio else ""))
    top.legend(loc="lower right", fontsize=8)
    served = [s.get("listener_requests_per_s") or 0 for s in steps]
    bottom.plot(n, served, "s-", color="tab:orange", label="listener requests/s at the edge")
    bottom.set_yscale("log")
    bottom.set_ylabel("listener requests/s")
    bottom.set_xscale("log")
    bottom.set_xlabel("simulated LL-HLS listeners")
    bottom.legend(loc="lower right", fontsize=8)
    for ax in (top, bottom):
        ax.grid(True, which="both", alpha=0.3)
    fig.text(0.01, 0.005, f"{offload.get('command', '')}; {offload.get('cpus', '')}",
             fontsize=7, color="gray")
    return _save(fig, path)


def part_delay(offload: dict[str, Any], path: Path) -> Path:
    steps = sorted(offload.get("steps", []), key=lambda s: s["listeners"])
    if not any(s.get("part_delay_distribution_s") for s in steps):
        raise Skip("offload.json keeps percentiles only (rerun tests.bench.offload)")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("viridis")
    for i, s in enumerate(steps):
        dist = s.get("part_delay_distribution_s")
        if not dist:
            continue
        color = colors(i / max(1, len(steps) - 1))
        label = f"{s['listeners']:,} listeners" + (" (client saturated)"
                                                   if s.get("client_saturated") else "")
        _cdf(ax, [b for b, _ in dist], [c for _, c in dist], color=color, lw=2, label=label)
        canary = s.get("canary_part_delay_distribution_s")
        if canary:
            _cdf(ax, [b for b, _ in canary], [c for _, c in canary], color=color, lw=1,
                 ls="--")
    ax.plot([], [], color="gray", ls="--", lw=1, label="canary listeners of the same step")
    ax.set_xscale("log")
    ax.set_xlim(1e-3, None)
    ax.set_xlabel("part delay: arrival at the listener − the part's PROGRAM-DATE-TIME end (s)")
    ax.set_ylabel("share of parts")
    ax.set_title("Part delivery delay per step (CDF)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


# --- mouth to ear -------------------------------------------------------------------------

def _latency_series(latency: dict[str, Any]) -> Iterable[tuple[str, list[float]]]:
    for path_name, path in (latency.get("paths") or {}).items():
        for listener, got in (path.get("listeners") or {}).items():
            if not isinstance(got, dict):
                continue
            # A listener heard over several joins: every join's markers, not the first's.
            joins = got.get("over_joins")
            values = (joins or got).get("latencies_s")
            if values:
                label = f"{path_name} → {listener}"
                if joins:
                    label += f", {joins['joins']} joins"
                yield label, [float(v) for v in values]


def mouth_to_ear(latency: dict[str, Any], path: Path) -> Path:
    series = list(_latency_series(latency))
    if not series:
        raise Skip("latency.json has no per-marker latencies")
    targets = latency.get("targets") or {}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, values in series:
        _cdf(ax, values, lw=2,
             label=f"{name} (p50 {statistics.median(values):.2f} s, n={len(values)})")
    for q, key, style in ((0.5, "p50_s", ":"), (0.99, "p99_s", "--")):
        if key in targets:
            ax.axvline(targets[key], color="tab:red", ls=style, lw=1,
                       label=f"target p{round(q * 100)} ≤ {targets[key]} s")
    ax.set_xlabel("mouth-to-ear latency: marker sent → marker heard at the page (s)")
    ax.set_ylabel("share of markers")
    ax.set_title("Mouth-to-ear latency through the edge (CDF)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.text(0.01, 0.005, str(latency.get("command", "")), fontsize=7, color="gray")
    return _save(fig, path)


# --- edge throughput ----------------------------------------------------------------------

def _throughput_modes(throughput: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """{mode: {server: [requests/s of each run]}} for the layouts edge.json has had."""
    modes = {}
    for mode, body in throughput.items():
        if isinstance(body, dict) and isinstance(body.get("runs"), dict):
            modes[mode] = body["runs"]
    if not modes and isinstance(throughput.get("runs"), dict):
        modes[str(throughput.get("cpus", "pinned"))] = throughput["runs"]
    return {mode: {server: [float(r["requests_per_second"]) for r in runs]
                   for server, runs in by_server.items()} for mode, by_server in modes.items()}


def edge_throughput(edge: dict[str, Any], path: Path) -> Path:
    modes = _throughput_modes(edge.get("throughput") or {})
    if not modes:
        raise Skip("edge.json has no throughput runs")
    fig, axes = plt.subplots(1, len(modes), figsize=(4 + 3 * len(modes), 4.5), sharey=True,
                             squeeze=False)
    for ax, (mode, servers) in zip(axes[0], modes.items(), strict=True):
        names = list(servers)
        medians = [statistics.median(servers[n]) for n in names]
        colors = ["tab:blue" if n == "townsquare" else "tab:gray" for n in names]
        ax.bar(range(len(names)), medians, color=colors, alpha=0.8)
        for i, n in enumerate(names):
            ax.plot([i] * len(servers[n]), servers[n], "k.", ms=5)
            ax.annotate(f"{medians[i] / 1000:.0f}k", (i, medians[i]), ha="center",
                        textcoords="offset points", xytext=(0, 4), fontsize=8)
        base = medians[names.index("nginx")] if "nginx" in names else None
        title = mode
        if base and "townsquare" in names:
            title += f": {medians[names.index('townsquare')] / base:.2f}× nginx"
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(names)),
                      [n.replace("_", "\n") for n in names], fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel("cache-hit requests/s (median, runs as dots)")
    fig.suptitle("Edge cache hits against nginx proxy_cache (wrk, one worker each)",
                 fontsize=10)
    return _save(fig, path)


# --- failover -----------------------------------------------------------------------------

def failover_times(failover: dict[str, Any], path: Path) -> Path:
    kills = failover.get("rounds") or []
    handed = (failover.get("handover") or {}).get("rounds") or []
    rounds = [*kills, *handed]
    if not rounds:
        raise Skip("failover.json has no rounds")
    kinds = [(k, label) for k, label in (("parts_back_s", "parts back at the edge"),
                                         ("speaker_back_s", "speaker heard again"),
                                         ("listener_gap_s", "listener's gap"))
             if any(k in r for r in rounds)]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.8 * len(rounds)), 4.5))
    width = 0.8 / max(1, len(kinds))
    for j, (key, label) in enumerate(kinds):
        xs = [i + (j - (len(kinds) - 1) / 2) * width for i in range(len(rounds))]
        ax.bar(xs, [r.get(key) or 0 for r in rounds], width, label=label)
    lease = failover.get("lease_s")
    if lease:
        ax.axhline(lease, color="tab:red", ls="--", lw=1, label=f"lease: {lease:g} s")
    ax.set_xticks(range(len(rounds)),
                  [f"{i + 1}: kill\n{r['killed']}" if "killed" in r
                   else f"{i + 1}: stop\n{r.get('stopped', '?')}" for i, r in enumerate(rounds)],
                  fontsize=8)
    ax.set_ylabel("seconds after the owner node was killed (SIGKILL)\nor stopped (SIGTERM)")
    ax.set_title(f"Failover: the room's node killed ({len(kills)} rounds),\nthen stopped, "
                 f"handing the room over ({len(handed)} rounds)", fontsize=10)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # room for the legend above the bars
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="upper left")
    fig.text(0.01, 0.005, str(failover.get("command", "")), fontsize=7, color="gray")
    return _save(fig, path)


# --- ingest cost --------------------------------------------------------------------------

def _cost_panel(ax: Any, values: dict[str, list[float]], by_thread: dict[str, float] | None,
                title: str) -> None:
    """Bars of the medians, each run a dot, townsquare's split by thread stacked inside."""
    names = list(values)
    medians = [statistics.median(values[n]) for n in names]
    ax.bar(range(len(names)), medians, alpha=0.8,
           color=["tab:blue" if n == "townsquare" else "tab:gray" for n in names])
    for i, n in enumerate(names):
        ax.plot([i] * len(values[n]), values[n], "k.", ms=5)
        ax.annotate(f"{medians[i]:.2f}", (i, medians[i]), ha="center",
                    textcoords="offset points", xytext=(0, 4), fontsize=8)
    if by_thread and "townsquare" in names:
        bottom, x = 0.0, names.index("townsquare")
        for kind, colour in (("encode", "tab:orange"), ("loop", "tab:green"),
                             ("store", "tab:purple"), ("other", "tab:brown")):
            value = float(by_thread.get(kind, 0.0))
            if value > 0:
                ax.bar(x, value, width=0.35, bottom=bottom, color=colour,
                       label=f"{kind} thread{'s' if kind in ('store', 'other') else ''}")
                bottom += value
        ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)


def ingest_cost(encoder: dict[str, Any], path: Path) -> Path:
    panels: list[tuple[dict[str, list[float]], dict[str, float] | None, str]] = []
    live = encoder.get("live_ingest")
    if isinstance(live, dict) and live.get("runs"):
        title = f"live ingest, one room: {live.get('ratio_townsquare_over_ffmpeg')}× ffmpeg"
        panels.append(({n: [float(r["cpu_s_per_broadcast_minute"]) for r in rs]
                        for n, rs in live["runs"].items()},
                       live.get("townsquare_median_by_thread_s_per_broadcast_minute"), title))
    per_core = encoder.get("rooms_per_core")
    scale = per_core.get("at_scale") if isinstance(per_core, dict) else None
    if isinstance(per_core, dict) and isinstance(scale, dict):
        title = (f"{scale['rooms']} rooms on one core, per room: "
                 f"{per_core.get('ratio_per_room_at_that_scale')}× ffmpeg")
        panels.append(({n: [float(r["cpu_s_per_broadcast_minute"]) for r in rs]
                        for n, rs in scale["runs"].items()},
                       scale.get("townsquare_median_by_thread_s_per_broadcast_minute"), title))
    encode = encoder.get("encode_only")
    if isinstance(encode, dict) and encode.get("runs"):
        title = f"encode and cut only: {encode.get('ratio_townsquare_over_ffmpeg')}× ffmpeg"
        panels.append(({n: [float(r["cpu_s_per_broadcast_minute"]) for r in rs]
                        for n, rs in encode["runs"].items()}, None, title))
    if not panels:
        raise Skip("encoder.json predates the live ingest runs")
    fig, axes = plt.subplots(1, len(panels), figsize=(4 + 3 * len(panels), 4.5),
                             sharey=True, squeeze=False)
    for ax, (values, by_thread, title) in zip(axes[0], panels, strict=True):
        _cost_panel(ax, values, by_thread, title)
    axes[0][0].set_ylabel("CPU seconds per broadcast-minute, per room")
    fig.suptitle("Ingest cost of the default ladder against the ffmpeg CLI", fontsize=10)
    return _save(fig, path)


# --- the run ------------------------------------------------------------------------------

FIGURES: list[tuple[str, Callable[[dict[str, Any], Path], Path], str]] = [
    ("offload.json", offload_curve, "offload-curve.png"),
    ("offload.json", part_delay, "part-delay.png"),
    ("latency.json", mouth_to_ear, "mouth-to-ear.png"),
    ("edge.json", edge_throughput, "edge-throughput.png"),
    ("failover.json", failover_times, "failover.png"),
    ("encoder.json", ingest_cost, "ingest-cost.png"),
]


def render(results: Path = RESULTS, images: Path = IMAGES) -> dict[str, str]:
    """Every figure the results allow; {png name: the file written, or why it was skipped}."""
    done: dict[str, str] = {}
    for source, draw, name in FIGURES:
        file = results / source
        try:
            if not file.exists():
                raise Skip(f"no {source}")
            try:
                data = json.loads(file.read_text())
            except json.JSONDecodeError as exc:
                raise Skip(f"{source} does not parse: {exc}") from None
            done[name] = str(draw(data, images / name))
        except Skip as why:
            done[name] = f"skipped: {why}"
        except (KeyError, TypeError, ValueError) as exc:  # a layout this code does not know
            plt.close("all")
            done[name] = f"skipped: {source} is not laid out as expected ({exc!r})"
    return done


def main() -> None:
    for name, outcome in render().items():
        print(f"{name}: {outcome}", file=sys.stderr if outcome.startswith("skipped") else None)


if __name__ == "__main__":
    main()
