#!/usr/bin/env bash
# Set up .venv (see dev/setup.sh) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/dev/setup.sh"
cd "$root"
exec "${SDTRAIN_VENV:-$root/.venv}/bin/python" -m pytest "$@"
