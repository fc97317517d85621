#!/usr/bin/env bash
# The static checks CI runs after the tests (and the pre-commit hooks run): lint, format, types.
# The `# fmt: skip` markers keep hand-laid tables and argument lists compact; ruff format respects them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${SDTRAIN_VENV:-$root/.venv}/bin"
cd "$root"
"$bin/ruff" check .
"$bin/ruff" format --check .
"$bin/mypy"
