"""The environment each deployment passes to a service is made of that service's settings.

One source of truth: the pydantic-settings classes. Field lists are read from
`model_fields` at test time, so a renamed or removed setting breaks the build here
instead of being ignored silently in production (the classes use extra="ignore").
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from edge.settings import EdgeSettings
from ingest.settings import IngestSettings
from packager.settings import OriginSettings
from tests.infra.conftest import MODULES, REPO, locals_of, parse, resources, unquote

# Which settings class a `townsquare <command>` process reads.
SETTINGS_BY_COMMAND: dict[str, type[BaseSettings]] = {
    "ingest": IngestSettings,
    "up": IngestSettings,
    "origin": OriginSettings,
    "edge": EdgeSettings,
}
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

    def tokens_in_module(self) -> set[str]:
        """Every TOWNSQUARE_* name written anywhere in the module, docs included."""
        return {t for p in self.dir.glob("*.tf") for t in TOKEN.findall(p.read_text())}


@pytest.fixture(scope="module")
def origin() -> TaskDefinition:
    return TaskDefinition("origin")


@pytest.fixture(scope="module")
def edge() -> TaskDefinition:
    return TaskDefinition("edge")


def test_origin_task_runs_ingest(origin: TaskDefinition) -> None:
    assert SETTINGS_BY_COMMAND[origin.command] is IngestSettings


def test_edge_task_runs_edge(edge: TaskDefinition) -> None:
    assert SETTINGS_BY_COMMAND[edge.command] is EdgeSettings


@pytest.mark.parametrize("module", ["origin", "edge"])
def test_task_env_is_made_of_its_settings(module: str) -> None:
    task = TaskDefinition(module)
    fields = env_names(SETTINGS_BY_COMMAND[task.command])
    passed = task.environment | task.secrets
    assert passed, f"{module}: found no environment in the task definition"
    assert passed <= fields, f"{module}: not settings of its service: {sorted(passed - fields)}"
    assert not (task.environment & task.secrets)


@pytest.mark.parametrize("module", ["origin", "edge"])
def test_module_names_no_setting_it_does_not_pass(module: str) -> None:
    task = TaskDefinition(module)
    stray = task.tokens_in_module() - (task.environment | task.secrets)
    assert not stray, f"{module}: mentions {sorted(stray)} but does not pass them"


def test_origin_passes_what_production_needs(origin: TaskDefinition) -> None:
    assert {"TOWNSQUARE_HOST", "TOWNSQUARE_S3_BUCKET", "TOWNSQUARE_S3_REGION"} <= origin.environment
    assert origin.secrets == {"TOWNSQUARE_ADMIN_TOKEN", "TOWNSQUARE_DATABASE_URL"}
    assert unquote(origin.locals["container_environment"]["TOWNSQUARE_HOST"]) == "0.0.0.0"


def test_edge_passes_what_production_needs(edge: TaskDefinition) -> None:
    assert {"TOWNSQUARE_HOST", "TOWNSQUARE_EDGE_UPSTREAM"} <= edge.environment
    assert not edge.secrets


def test_origin_ports_are_the_settings_defaults(origin: TaskDefinition) -> None:
    # IngestSettings has no origin port of its own; the in-process origin uses OriginSettings'.
    origin_cls = IngestSettings if "origin_port" in IngestSettings.model_fields else OriginSettings
    assert origin.locals["control_port"] == default_of(IngestSettings, "control_port")
    assert origin.locals["rtmp_port"] == default_of(IngestSettings, "rtmp_port")
    assert origin.locals["origin_port"] == default_of(origin_cls, "origin_port")


def test_edge_port_is_the_settings_default(edge: TaskDefinition) -> None:
    assert edge.locals["edge_port"] == default_of(EdgeSettings, "edge_port")


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
    assert all(FOREIGN_ENV.match(e) for e in foreign), f"{name}: unexpected {sorted(foreign)}"
    ours = env - foreign
    command = service.get("command") or []
    runs_townsquare = "entrypoint" not in service and "build" in service
    if not runs_townsquare:
        assert not ours, f"{name} does not run townsquare but is given {sorted(ours)}"
        return
    fields = env_names(SETTINGS_BY_COMMAND[command[0]])
    assert ours <= fields, f"{name}: not settings of `townsquare {command[0]}`: {sorted(ours - fields)}"


def test_compose_has_the_production_shape() -> None:
    services = _compose_services()
    commands = [s.get("command", [None])[0] for s in services.values() if "build" in s]
    assert commands.count("edge") >= 3  # two edges and a shield
    assert commands.count("ingest") == 1
    upstreams = {
        name: s["environment"]["TOWNSQUARE_EDGE_UPSTREAM"]
        for name, s in services.items()
        if s.get("command") == ["edge"]
    }
    shields = [n for n, u in upstreams.items() if "ingest" in u]
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
