"""The environment each deployment passes to a service is made of that service's settings.

One source of truth: the pydantic-settings classes. Field lists are read from
`model_fields` at test time, so a renamed or removed setting breaks the build here
instead of being ignored silently in production (the classes use extra="ignore").
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from pydantic_settings import BaseSettings

from edge.settings import EdgeSettings
from ingest.settings import IngestSettings
from packager.settings import OriginSettings, TierSettings
from tests.infra.conftest import (
    EXAMPLES,
    MODULES,
    REPO,
    blocks,
    locals_of,
    parse,
    resources,
    unquote,
)

# Which settings class a `townsquare <command>` process reads.
SETTINGS_BY_COMMAND: dict[str, type[BaseSettings]] = {
    "ingest": IngestSettings,
    "up": IngestSettings,
    "origin": OriginSettings,
    "tier": TierSettings,
    "edge": EdgeSettings,
}
# Modules that run a townsquare service in an ECS task definition.
SERVICE_MODULES = ["origin", "tier", "edge"]
TOKEN = re.compile(r"\bTOWNSQUARE_[A-Z0-9_]+\b")
# Not townsquare settings but read by the libraries it uses (boto3).
FOREIGN_ENV = re.compile(r"^AWS_[A-Z_]+$")


def env_names(cls: type[BaseSettings]) -> set[str]:
    prefix = cls.model_config.get("env_prefix", "")
    names = set()
    for field, info in cls.model_fields.items():
        alias = info.validation_alias
        names.add((alias if isinstance(alias, str) else prefix + field).upper())
    return names


def default_of(cls: type[BaseSettings], field: str) -> Any:
    return cls.model_fields[field].default


class TaskDefinition:
    """What one module's ECS task definition passes to its container, read from HCL."""

    def __init__(self, module: str) -> None:
        self.dir = MODULES / module
        main = parse(self.dir / "main.tf")
        (task,) = resources(main, "aws_ecs_task_definition").values()
        self.spec = unquote(task["container_definitions"])
        self.locals = locals_of(main)

    def _local_keys(self, attribute: str) -> set[str]:
        match = re.search(rf"{attribute} = \[for k, v in local\.(\w+)", self.spec)
        if match is None:
            return set()
        return set(self.locals[match.group(1)])

    @property
    def command(self) -> str:
        match = re.search(r'command = \["(\w+)"', self.spec)
        assert match, f"{self.dir.name}: task definition has no townsquare command"
        return match.group(1)

    @property
    def environment(self) -> set[str]:
        return self._local_keys("environment")

    @property
    def secrets(self) -> set[str]:
        return self._local_keys("secrets")

    @property
    def entrypoint(self) -> str | None:
        """The Python program the container starts with (`entryPoint = ["python", "-c",
        local.X]`), as the container gets it; None when the image's entrypoint is used."""
        match = re.search(r"entryPoint = \[[^\]]*local\.(\w+)", self.spec)
        if match is None:
            return None
        text = unquote(self.locals[match.group(1)])
        head, _, body = text.partition("\n")
        assert head.startswith("<<-"), f"{self.dir.name}: expected an indented heredoc"
        body = textwrap.dedent(body.rsplit("\n", 1)[0])
        # The only interpolations are locals holding numbers (ports).
        return re.sub(r"\$\{local\.(\w+)\}", lambda m: str(self.locals[m.group(1)]), body)

    @property
    def derived(self) -> set[str]:
        """Settings the entrypoint sets per task at container start."""
        return set(TOKEN.findall(self.entrypoint or ""))

    @property
    def passed(self) -> set[str]:
        return self.environment | self.secrets | self.derived

    def tokens_in_module(self) -> set[str]:
        """Every TOWNSQUARE_* name written anywhere in the module, docs included."""
        return {t for p in self.dir.glob("*.tf") for t in TOKEN.findall(p.read_text())}


@pytest.fixture(scope="module")
def origin() -> TaskDefinition:
    return TaskDefinition("origin")


@pytest.fixture(scope="module")
def tier() -> TaskDefinition:
    return TaskDefinition("tier")


@pytest.fixture(scope="module")
def edge() -> TaskDefinition:
    return TaskDefinition("edge")


def test_origin_task_runs_ingest(origin: TaskDefinition) -> None:
    assert SETTINGS_BY_COMMAND[origin.command] is IngestSettings


def test_tier_task_runs_tier(tier: TaskDefinition) -> None:
    assert SETTINGS_BY_COMMAND[tier.command] is TierSettings


def test_edge_task_runs_edge(edge: TaskDefinition) -> None:
    assert SETTINGS_BY_COMMAND[edge.command] is EdgeSettings


@pytest.mark.parametrize("module", SERVICE_MODULES)
def test_task_env_is_made_of_its_settings(module: str) -> None:
    task = TaskDefinition(module)
    fields = env_names(SETTINGS_BY_COMMAND[task.command])
    assert task.passed, f"{module}: found no environment in the task definition"
    assert task.passed <= fields, (
        f"{module}: not settings of its service: {sorted(task.passed - fields)}"
    )
    assert not (task.environment & task.secrets)
    assert not (task.derived & (task.environment | task.secrets))


@pytest.mark.parametrize("module", SERVICE_MODULES)
def test_module_names_no_setting_it_does_not_pass(module: str) -> None:
    task = TaskDefinition(module)
    stray = task.tokens_in_module() - task.passed
    assert not stray, f"{module}: mentions {sorted(stray)} but does not pass them"


def test_origin_passes_what_production_needs(origin: TaskDefinition) -> None:
    assert {"TOWNSQUARE_HOST", "TOWNSQUARE_S3_BUCKET", "TOWNSQUARE_S3_REGION"} <= origin.environment
    assert origin.secrets == {"TOWNSQUARE_ADMIN_TOKEN", "TOWNSQUARE_DATABASE_URL"}
    # Cluster mode: every task is a node with its own id and the address the tier reaches.
    assert origin.derived == {"TOWNSQUARE_NODE_ID", "TOWNSQUARE_INTERNAL_URL"}
    assert unquote(origin.locals["container_environment"]["TOWNSQUARE_HOST"]) == "0.0.0.0"


def test_tier_passes_what_production_needs(tier: TaskDefinition) -> None:
    assert {"TOWNSQUARE_HOST", "TOWNSQUARE_S3_BUCKET", "TOWNSQUARE_S3_REGION"} <= tier.environment
    assert tier.secrets == {"TOWNSQUARE_DATABASE_URL"}
    assert not tier.derived
    assert unquote(tier.locals["container_environment"]["TOWNSQUARE_HOST"]) == "0.0.0.0"


def test_edge_passes_what_production_needs(edge: TaskDefinition) -> None:
    assert {"TOWNSQUARE_HOST", "TOWNSQUARE_EDGE_UPSTREAM"} <= edge.environment
    assert not edge.secrets


def test_origin_ports_are_the_settings_defaults(origin: TaskDefinition) -> None:
    # IngestSettings has no origin port of its own; the in-process origin uses OriginSettings'.
    origin_cls = IngestSettings if "origin_port" in IngestSettings.model_fields else OriginSettings
    assert origin.locals["control_port"] == default_of(IngestSettings, "control_port")
    assert origin.locals["rtmp_port"] == default_of(IngestSettings, "rtmp_port")
    assert origin.locals["origin_port"] == default_of(origin_cls, "origin_port")


def test_tier_port_is_the_settings_default(tier: TaskDefinition) -> None:
    assert tier.locals["origin_port"] == default_of(TierSettings, "origin_port")


def test_edge_port_is_the_settings_default(edge: TaskDefinition) -> None:
    assert edge.locals["edge_port"] == default_of(EdgeSettings, "edge_port")


# --- the ingest entrypoint, run for real against a fake task metadata endpoint -------------
class _Metadata(BaseHTTPRequestHandler):
    TASK: ClassVar[dict[str, Any]] = {
        "TaskARN": "arn:aws:ecs:eu-west-1:123456789012:task/townsquare/0123456789abcdef0",
        "Containers": [{"Networks": [{"NetworkMode": "awsvpc",
                                       "IPv4Addresses": ["10.42.10.7"]}]}],
    }

    def do_GET(self) -> None:
        body = json.dumps(self.TASK).encode() if self.path.endswith("/task") else b"{}"
        self.send_response(200 if self.path.endswith("/task") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def metadata() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Metadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v4/container"
    finally:
        server.shutdown()
        server.server_close()


def _run_entrypoint(task: TaskDefinition, tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """Run the entrypoint as ECS would (`python -c <program> <command>`), with a stand-in
    `townsquare` on PATH that reports its arguments and environment."""
    fake = tmp_path / "townsquare"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "print(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ)}))\n")
    fake.chmod(0o755)
    assert task.entrypoint is not None
    run = subprocess.run(
        [sys.executable, "-c", task.entrypoint, task.command],
        env={"PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}", **env},
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["argv"] == [task.command]
    return dict(out["env"])


def test_ingest_entrypoint_names_the_node_after_its_task(
        origin: TaskDefinition, metadata: str, tmp_path: Path) -> None:
    env = _run_entrypoint(origin, tmp_path, {"ECS_CONTAINER_METADATA_URI_V4": metadata})
    assert env["TOWNSQUARE_NODE_ID"] == "0123456789abcdef0"
    port = default_of(IngestSettings, "origin_port")
    assert env["TOWNSQUARE_INTERNAL_URL"] == f"http://10.42.10.7:{port}"


def test_ingest_entrypoint_keeps_given_values_and_survives_no_metadata(
        origin: TaskDefinition, tmp_path: Path) -> None:
    given = {"TOWNSQUARE_NODE_ID": "node-a", "TOWNSQUARE_INTERNAL_URL": "http://10.0.0.9:8001"}
    env = _run_entrypoint(origin, tmp_path, given)  # no ECS_CONTAINER_METADATA_URI_V4
    assert {k: env[k] for k in given} == given
    env = _run_entrypoint(origin, tmp_path, {})
    assert env["TOWNSQUARE_NODE_ID"]  # the hostname
    assert re.fullmatch(r"http://[0-9.]+:\d+", env["TOWNSQUARE_INTERNAL_URL"])


# --- the complete example wires the rooms database into every service that reads it -------
def _example_modules() -> dict[str, dict[str, Any]]:
    return blocks(parse(EXAMPLES / "complete" / "main.tf"), "module")


def test_example_gives_ingest_and_tier_the_database_url() -> None:
    mods = _example_modules()
    wanted = "${module.database.database_url_secret_arn}"
    for name in ("origin", "tier"):
        assert unquote(mods[name].get("database_url_secret_arn")) == wanted, name
    assert unquote(mods["database"]["source"]) == "../../modules/database"
    assert unquote(mods["tier"]["source"]) == "../../modules/tier"


def test_example_edges_reach_the_tier_not_the_nodes() -> None:
    mods = _example_modules()
    assert unquote(mods["shield"]["upstream_url"]) == "${module.tier.origin_internal_url}"
    edge = unquote(mods["edge"]["upstream_url"])
    assert "module.tier.origin_internal_url" in edge and "module.origin." not in edge


def _compose_services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((REPO / "compose.yaml").read_text())["services"]


def _compose_env(service: dict[str, Any]) -> set[str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return {item.split("=", 1)[0] for item in env}
    return set(env)


@pytest.mark.parametrize("name", sorted(_compose_services()))
def test_compose_env_is_made_of_its_settings(name: str) -> None:
    service = _compose_services()[name]
    env = _compose_env(service)
    foreign = {e for e in env if not e.startswith("TOWNSQUARE_")}
    ours = env - foreign
    command = service.get("command") or []
    runs_townsquare = "entrypoint" not in service and "build" in service
    if not runs_townsquare:
        # Another program's own settings (PostgreSQL's image, say) are its business.
        assert not ours, f"{name} does not run townsquare but is given {sorted(ours)}"
        return
    assert all(FOREIGN_ENV.match(e) for e in foreign), f"{name}: unexpected {sorted(foreign)}"
    fields = env_names(SETTINGS_BY_COMMAND[command[0]])
    assert ours <= fields, f"{name}: not settings of `townsquare {command[0]}`: {sorted(ours - fields)}"


def test_compose_has_the_production_shape() -> None:
    services = _compose_services()
    runs = {n: s.get("command", [None])[0] for n, s in services.items() if "build" in s}
    commands = list(runs.values())
    assert commands.count("edge") >= 3  # two edges and a shield
    assert commands.count("tier") == 1
    nodes = [n for n, c in runs.items() if c == "ingest"]
    assert len(nodes) >= 2, "a cluster of ingest nodes"
    envs = {n: services[n]["environment"] for n in nodes}
    assert len({e["TOWNSQUARE_NODE_ID"] for e in envs.values()}) == len(nodes)
    assert all(e["TOWNSQUARE_INTERNAL_URL"] == f"http://{n}:{e['TOWNSQUARE_ORIGIN_PORT']}"
               for n, e in envs.items())
    # Nodes relay speakers and forward "end room" to the control URL a node registers (its
    # public one): inside compose it must reach that very node.
    assert all(e["TOWNSQUARE_PUBLIC_CONTROL_URL"] == f"http://{n}:{e['TOWNSQUARE_CONTROL_PORT']}"
               for n, e in envs.items())
    (tier_name,) = [n for n, c in runs.items() if c == "tier"]
    databases = {e["TOWNSQUARE_DATABASE_URL"] for e in envs.values()}
    databases.add(services[tier_name]["environment"]["TOWNSQUARE_DATABASE_URL"])
    assert len(databases) == 1 and databases.pop().startswith("postgresql://")
    upstreams = {
        name: s["environment"]["TOWNSQUARE_EDGE_UPSTREAM"]
        for name, s in services.items()
        if s.get("command") == ["edge"]
    }
    shields = [n for n, u in upstreams.items() if f"//{tier_name}:" in u]
    assert len(shields) == 1
    assert sum(f"//{shields[0]}:" in u for u in upstreams.values()) >= 2


def test_dockerfile_env_is_made_of_settings() -> None:
    text = (REPO / "Dockerfile").read_text()
    every = set().union(*(env_names(c) for c in SETTINGS_BY_COMMAND.values()))
    named = set(TOKEN.findall(text))
    assert named <= every, f"Dockerfile sets unknown settings {sorted(named - every)}"


def test_dockerfile_runs_unprivileged() -> None:
    lines = [ln.strip() for ln in (REPO / "Dockerfile").read_text().splitlines()]
    froms = [ln for ln in lines if ln.upper().startswith("FROM ")]
    assert len(froms) >= 2, "expected a multi-stage build"
    users = [ln for ln in lines if ln.upper().startswith("USER ")]
    assert users and users[-1].split()[1] not in {"root", "0"}
