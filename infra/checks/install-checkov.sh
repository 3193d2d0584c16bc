#!/usr/bin/env bash
# Installs checkov into its own virtualenv (.venv-checkov at the repository root).
#
# checkov pins its own boto3/botocore/packaging, older than the service needs, so it
# lives apart from the project's packages. tests/infra finds it there (or via
# TOWNSQUARE_CHECKOV). Idempotent: a second run only checks the install.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${TOWNSQUARE_CHECKOV_VENV:-$root/.venv-checkov}"
python="${PYTHON:-python3}"
# Checkov 3.x: the `#checkov:skip=ID:reason` syntax and --skip-download are stable across it.
spec="${CHECKOV_SPEC:-checkov>=3.2,<4}"

if [ ! -x "$venv/bin/checkov" ]; then
  "$python" -m venv "$venv"
  # Keep the venv out of git without touching the repository's .gitignore.
  printf '*\n' > "$venv/.gitignore"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$spec"
fi
"$venv/bin/checkov" --version
