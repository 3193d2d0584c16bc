"""Shared parsing for the offline infrastructure checks (no terraform binary, no network)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is needed for the infra checks")

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
MODULES = INFRA / "modules"
EXAMPLES = INFRA / "examples"


def unquote(value: Any) -> Any:
    """python-hcl2 ≥ 5 keeps the quotes of string literals and labels; older ones don't."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def tf_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*.tf") if ".terraform" not in p.parts)


@lru_cache(maxsize=None)
def parse(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return hcl2.load(f)


def blocks(doc: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    """Labelled blocks of one kind (`variable`, `output`) as {label: body}."""
    found: dict[str, dict[str, Any]] = {}
    for item in doc.get(kind, []):
        for label, body in item.items():
            found[unquote(label)] = body
    return found


def resources(doc: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for item in doc.get("resource", []):
        for kind, named in item.items():
            if unquote(kind) == rtype:
                for name, body in named.items():
                    found[unquote(name)] = body
    return found


def locals_of(doc: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for item in doc.get("locals", []):
        merged.update({k: v for k, v in item.items() if not k.startswith("__")})
    return merged


def modules() -> list[Path]:
    return sorted(p for p in MODULES.iterdir() if p.is_dir())


def examples() -> list[Path]:
    return sorted(p for p in EXAMPLES.iterdir() if p.is_dir())
