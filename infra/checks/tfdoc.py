"""Print a module's Inputs and Outputs as Markdown tables (a tiny terraform-docs).

    python infra/checks/tfdoc.py infra/modules/edge
"""

from __future__ import annotations

import sys
from pathlib import Path

import hcl2


def _clean(value: object) -> str:
    text = str(value)
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if text.startswith("${") and text.endswith("}"):
        text = text[2:-1]
    return text.replace("|", "\\|").replace("\\\"", '"')


def _blocks(path: Path, kind: str) -> list[tuple[str, dict]]:
    with path.open() as f:
        doc = hcl2.load(f)
    return [(_clean(k), v) for item in doc.get(kind, []) for k, v in item.items()]


def render(module: Path) -> str:
    lines = ["## Inputs", "", "| Name | Description | Type | Default |", "|---|---|---|---|"]
    for name, body in _blocks(module / "variables.tf", "variable"):
        default = f"`{_clean(body['default'])}`" if "default" in body else "required"
        if "default" in body and body["default"] is None:
            default = "`null`"
        lines.append(
            f"| `{name}` | {_clean(body['description'])} | `{_clean(body['type'])}` | {default} |"
        )
    lines += ["", "## Outputs", "", "| Name | Description |", "|---|---|"]
    for name, body in _blocks(module / "outputs.tf", "output"):
        lines.append(f"| `{name}` | {_clean(body['description'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(Path(sys.argv[1])), end="")
