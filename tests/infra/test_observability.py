"""Operations files checked against the real thing: the alert rules with promtool, the
dashboard's and the rules' metric names against the /metrics pages of a live two-node stack,
every expression evaluated by a real Prometheus scraping that stack, and the stack's logs
parsed as JSON lines."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.procs import free_port, free_port_with, wait_http

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "infra" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
DASHBOARD = REPO / "infra" / "grafana" / "townsquare.json"
TOKEN = "observability-token-0123456789"
# Series Prometheus itself makes, not a service.
PROMETHEUS_SERIES = {"up"}
# What Grafana puts in for its variables when the dashboard is viewed.
GRAFANA_VARIABLES = {"$__rate_interval": "5s", "$__range": "1m", "$edge_job": "townsquare-edge"}


def _debian_tool(name: str) -> str:
    """promtool and prometheus come with Debian's `prometheus` package (`./dev test` installs it)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed: apt-get install prometheus"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


# ---- metric names in PromQL -----------------------------------------------------------------

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_WORD = re.compile(r"(?<![\w.$])[A-Za-z_:][\w:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: every bare word that is not a function,
    an aggregation, a keyword, a label or a label value."""
    text = _QUOTED.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for m in _WORD.finditer(text):
        word = m.group()
        if word.lower() in _KEYWORDS or text[m.end():].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def test_metric_names_are_read_from_promql_as_prometheus_would() -> None:
    expr = ('sum by (instance, rendition) (rate(a_total{job=~"x_total|y", kind!="b"}[5m]))\n'
            '/ on (instance) group_left sum without (le) (b_gauge offset 5m) > bool 0.9e3'
            ' and time() - c:recorded[$__rate_interval] unless absent(d{e="f"})')
    assert metric_names(expr) == {"a_total", "b_gauge", "c:recorded", "d"}


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expression) for every query of every panel."""
    return [(p["title"], t["expr"]) for p in _dashboard()["panels"] for t in p.get("targets", [])]


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


# ---- static checks ----------------------------------------------------------------------------

def test_alert_rules_pass_promtool_check() -> None:
    promtool = _debian_tool("promtool")
    for args in (["check", "rules", str(ALERTS)],
                 ["check", "config", str(PROMETHEUS_DIR / "prometheus.yml")]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_fires_in_promtool_unit_tests() -> None:
    promtool = _debian_tool("promtool")
    done = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS_DIR,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"]
             if case.get("exp_alerts")}
    assert fired == {rule["alert"] for rule in _rules()}


def test_every_alert_tells_the_operator_what_to_do() -> None:
    rules = _rules()
    assert len({r["alert"] for r in rules}) == len(rules)
    for rule in rules:
        notes = rule.get("annotations", {})
        assert notes.get("summary") and notes.get("runbook") and notes.get("description"), rule
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule
        # A counter that moved at all is the event itself; every level-like condition waits.
        if not re.search(r"\b(increase|delta)\(", rule["expr"]):
            assert rule.get("for"), f"{rule['alert']} has no `for:`"


def test_dashboard_shows_what_operators_asked_for() -> None:
    dash = _dashboard()
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels)
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
    named = set().union(*(metric_names(e) for _, e in _dashboard_exprs()))
    wanted = {
        "rooms live": "townsquare_ingest_rooms_live",
        "parts cut": "townsquare_packager_parts_total",
        "store backlog": "townsquare_store_pending_objects",
        "edge hit ratio": "townsquare_edge_cache_hits_total",
        "upstream requests/s": "townsquare_edge_upstream_requests_total",
        "waiters": "townsquare_edge_waiters",
        "audience": "townsquare_edge_listeners",
        "breaker state": "townsquare_edge_breakers_open",
        "shedding": "townsquare_edge_rejected_total",
    }
    assert not {k for k, v in wanted.items() if v not in named}


def test_compose_observability_profile_is_optional_and_loads_these_files() -> None:
    services = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"]
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).is_dir(), volume
    assert all("profiles" not in s for n, s in services.items() if n not in ("prometheus", "grafana"))
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True,
                                        timeout=30).returncode != 0:
        pytest.skip("no `docker compose` here: the profile was checked as YAML only")
    done = subprocess.run([docker, "compose", "--profile", "observability", "config", "-q"],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TOWNSQUARE_ADMIN_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr


# ---- a live stack ------------------------------------------------------------------------------

@dataclass
class Stack:
    # Scrape targets by the job names of infra/prometheus/prometheus.yml.
    jobs: dict[str, list[str]]
    edge: str
    stderr: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`townsquare up --demo demo --nodes 2` with JSON logs: two ingest nodes, the origin tier
    and an edge, each in its own process, stderr kept apart from the banner on stdout."""
    tmp = tmp_path_factory.mktemp("observability")
    control, origin = free_port_with((10,)), free_port_with((101, 102))
    edge, rtmp = free_port(), free_port_with((1,))
    argv = [sys.executable, "-m", "townsquare", "up", "--demo", "demo", "--nodes", "2",
            "--data", str(tmp / "data"), "--control-port", str(control),
            "--origin-port", str(origin), "--edge-port", str(edge), "--rtmp-port", str(rtmp)]
    env = {**os.environ, "TOWNSQUARE_ADMIN_TOKEN": TOKEN, "TOWNSQUARE_LOG_FORMAT": "json"}
    stderr = tmp / "stderr.log"
    with open(tmp / "stdout.log", "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, start_new_session=True)
    # Node i's control API is 10 ports up, its origin 100 + i above the tier (`townsquare.stack`).
    jobs = {
        "townsquare-ingest": [f"127.0.0.1:{control}", f"127.0.0.1:{control + 10}"],
        "townsquare-origin": [f"127.0.0.1:{origin + 101}", f"127.0.0.1:{origin + 102}"],
        "townsquare-tier": [f"127.0.0.1:{origin}"],
        "townsquare-edge": [f"127.0.0.1:{edge}"],
    }
    try:
        for target in (t for targets in jobs.values() for t in targets):
            wait_http(f"http://{target}/healthz", 60, proc)
        wait_http(f"http://127.0.0.1:{edge}/live/demo/master.m3u8", 60, proc)
        yield Stack(jobs, f"http://127.0.0.1:{edge}", stderr)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _exported(stack: Stack) -> set[str]:
    names: set[str] = set()
    for target in (t for targets in stack.jobs.values() for t in targets):
        text = httpx.get(f"http://{target}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            names.add(family.name)
            if family.type == "counter":  # a counter without samples yet is still exported
                names.add(family.name + "_total")
            names.update(sample.name for sample in family.samples)
    return names


def test_dashboard_and_alerts_name_only_metrics_the_services_export(stack: Stack) -> None:
    exported = _exported(stack) | PROMETHEUS_SERIES
    unknown = {(title, name) for title, expr in _dashboard_exprs()
               for name in metric_names(expr) - exported}
    assert not unknown, f"dashboard panels name metrics no service exports: {sorted(unknown)}"
    unknown = {(rule["alert"], name) for rule in _rules()
               for name in metric_names(rule["expr"]) - exported}
    assert not unknown, f"alerts name metrics no service exports: {sorted(unknown)}"


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping the stack every second, with alerts.yml loaded."""
    exe = _debian_tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                           for job, targets in stack.jobs.items()],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(tmp / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [exe, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/-/ready", 30, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _query(prometheus: str, expr: str) -> dict[str, Any]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    return dict(answer)


def _value(prometheus: str, expr: str) -> float | None:
    result = _query(prometheus, expr)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_dashboard_queries_and_alert_rules_evaluate_on_a_live_stack(
        stack: Stack, prometheus: str) -> None:
    # Listeners on the edge, so that hits, misses and the audience have something to count.
    for _ in range(3):
        httpx.get(f"{stack.edge}/live/demo/master.m3u8", timeout=10)
        httpx.get(f"{stack.edge}/live/demo/aac96/live.m3u8", timeout=10)
    deadline = time.monotonic() + 30
    while (_value(prometheus, "sum(rate(townsquare_packager_parts_total[5s]))") or 0) <= 0:
        assert time.monotonic() < deadline, "Prometheus never saw a part cut"
        time.sleep(0.5)
    targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]
    assert {t["health"] for t in targets["activeTargets"]} == {"up"}, targets

    values: dict[str, float | None] = {}
    for title, expr in _dashboard_exprs():
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        answer = _query(prometheus, expr)
        assert answer["status"] == "success", (title, expr, answer)
        result = answer["data"]["result"]
        values.setdefault(title, float(result[0]["value"][1]) if result else None)
    assert values["Rooms live"] == 1 and values["Speakers"] == 1
    assert (values["Parts cut /s"] or 0) > 0 and values["Store healthy"] == 1
    assert values["Rooms with circuit open"] == 0 and values["Edge waiters"] is not None

    deadline = time.monotonic() + 15
    while True:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if not any(r["lastEvaluation"].startswith("0001-") for r in rules):  # never evaluated
            break
        assert time.monotonic() < deadline, "Prometheus did not evaluate every rule"
        time.sleep(0.5)
    assert len(rules) == len(_rules())
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken, broken


# ---- JSON logs --------------------------------------------------------------------------------

def _json_lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    complete = text[:text.rfind("\n") + 1]  # a process may be half-way through a line
    lines = [line for line in complete.splitlines() if line]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    return records


def test_every_process_of_the_stack_logs_json_lines(stack: Stack) -> None:
    records = _json_lines(stack.stderr)
    assert records
    for r in records:
        assert {"time", "level", "logger", "message", "service", "pid"} <= r.keys(), r
        assert r["time"].endswith("+00:00") and r["level"] in ("DEBUG", "INFO", "WARNING",
                                                               "ERROR", "CRITICAL")
    by_service = {r["service"] for r in records}
    assert {"up", "ingest", "tier", "edge"} <= by_service
    assert len({r["pid"] for r in records}) >= 4
    node2 = [r for r in records if r["service"] == "ingest"]
    assert node2 and all(r["node"] == "node-2" for r in node2)
    assert any(r["message"] == "room demo created" for r in records)


PROBE = """
import logging
from serving.logs import configure_logging
configure_logging("probe")
log = logging.getLogger("townsquare.probe")
log.info("room %s is live", "demo", extra={"room": "demo", "broadcast": "b1"})
try:
    1 / 0
except ZeroDivisionError:
    log.exception("mixer failed\\nbadly")
"""


def _probe(log_format: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TOWNSQUARE_LOG_FORMAT"}
    if log_format is not None:
        env["TOWNSQUARE_LOG_FORMAT"] = log_format
    return subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)


def test_json_lines_carry_structured_fields_and_tracebacks_on_one_line() -> None:
    done = _probe("json")
    assert done.returncode == 0, done.stderr
    first, second = (json.loads(line) for line in done.stderr.splitlines())
    assert first["message"] == "room demo is live" and first["logger"] == "townsquare.probe"
    assert (first["room"], first["broadcast"], first["service"]) == ("demo", "b1", "probe")
    assert second["level"] == "ERROR" and second["message"] == "mixer failed\nbadly"
    assert "ZeroDivisionError" in second["exception"]


def test_logs_stay_plain_text_by_default() -> None:
    done = _probe(None)
    lines = done.stderr.splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO townsquare\.probe: "
                        r"room demo is live", lines[0]), lines
    assert any("ZeroDivisionError" in line for line in lines)


def test_an_unknown_log_format_is_refused_with_its_name() -> None:
    done = subprocess.run([sys.executable, "-m", "townsquare", "edge"], cwd=REPO,
                          env={**os.environ, "TOWNSQUARE_LOG_FORMAT": "xml"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "TOWNSQUARE_LOG_FORMAT" in done.stderr and "Traceback" not in done.stderr
