"""Every .tf parses, and the modules keep the terraform-aws-modules shape."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.infra.conftest import (
    REPO,
    blocks,
    examples,
    modules,
    parse,
    tf_files,
    unquote,
)

MODULE_FILES = ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md")


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_there_are_modules_and_an_example() -> None:
    assert {m.name for m in modules()} >= {"storage", "database", "origin", "tier", "edge", "cdn"}
    assert "complete" in {e.name for e in examples()}


@pytest.mark.parametrize("path", tf_files(), ids=_rel)
def test_tf_file_parses(path: Path) -> None:
    assert isinstance(parse(path), dict)


@pytest.mark.parametrize("path", tf_files(), ids=_rel)
def test_every_variable_has_type_and_description(path: Path) -> None:
    for name, body in blocks(parse(path), "variable").items():
        assert body.get("type"), f"{_rel(path)}: variable {name} has no type"
        assert unquote(body.get("description", "")).strip(), (
            f"{_rel(path)}: variable {name} has no description"
        )


@pytest.mark.parametrize("path", tf_files(), ids=_rel)
def test_every_output_has_description(path: Path) -> None:
    for name, body in blocks(parse(path), "output").items():
        assert unquote(body.get("description", "")).strip(), (
            f"{_rel(path)}: output {name} has no description"
        )


@pytest.mark.parametrize("module", modules() + examples(), ids=lambda p: p.name)
def test_module_has_the_standard_files(module: Path) -> None:
    missing = [f for f in MODULE_FILES if not (module / f).is_file()]
    assert not missing, f"{_rel(module)} lacks {missing}"


@pytest.mark.parametrize("module", modules(), ids=lambda p: p.name)
def test_module_declares_no_provider_block(module: Path) -> None:
    for path in module.glob("*.tf"):
        assert not parse(path).get("provider"), f"{_rel(path)} configures a provider"


@pytest.mark.parametrize("module", modules() + examples(), ids=lambda p: p.name)
def test_versions_pin_provider_floors(module: Path) -> None:
    terraform = parse(module / "versions.tf")["terraform"][0]
    assert unquote(terraform["required_version"]).startswith(">=")
    providers = terraform["required_providers"][0]
    providers = {k: v for k, v in providers.items() if not k.startswith("__")}
    assert "aws" in providers
    for name, spec in providers.items():
        assert unquote(spec["version"]).startswith(">="), f"{module.name}: {name} has no floor"


@pytest.mark.parametrize("module", modules() + examples(), ids=lambda p: p.name)
def test_readme_documents_every_variable_and_output(module: Path) -> None:
    readme = (module / "README.md").read_text()
    names = list(blocks(parse(module / "variables.tf"), "variable"))
    names += list(blocks(parse(module / "outputs.tf"), "output"))
    missing = [n for n in names if not re.search(rf"`{re.escape(n)}`", readme)]
    assert not missing, f"{_rel(module)}/README.md does not mention {missing}"


@pytest.mark.parametrize("module", modules() + examples(), ids=lambda p: p.name)
def test_readme_tables_match_the_code(module: Path) -> None:
    spec = importlib.util.spec_from_file_location("tfdoc", REPO / "infra/checks/tfdoc.py")
    assert spec and spec.loader
    tfdoc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tfdoc)

    assert (module / "README.md").read_text().endswith(tfdoc.render(module)), (
        f"regenerate the tables: python infra/checks/tfdoc.py {_rel(module)}"
    )


@pytest.mark.skipif(shutil.which("terraform") is None, reason="no terraform binary here")
def test_tf_files_are_formatted() -> None:
    # `terraform fmt` needs no providers and no network; run it when a binary happens to exist.
    run = subprocess.run(
        ["terraform", "fmt", "-check", "-recursive", "-list=true", "infra"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, f"not formatted: {run.stdout}"
