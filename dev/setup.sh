#!/usr/bin/env bash
# Create .venv with the WebUI v1.10.1 package set (tests/constraints-webui.txt) and SD-Train installed in it.
# Idempotent: a second run only checks. Needs Python 3.11 and access to PyPI; torch is the CPU build
# unless a torch is already installed (pip never pulls a CUDA torch from here).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SDTRAIN_VENV:-$root/.venv}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

if [ ! -x "$venv/bin/python" ]; then
  echo "[sd-train] creating $venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.sdtrain-deps"
want="$(cat "$root/tests/constraints-webui.txt" "$root/tests/requirements-test.txt" "$root/pyproject.toml" | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[sd-train] installing the WebUI v1.10.1 stack (CPU torch) into $venv"
  "$venv/bin/python" -m pip install --quiet --upgrade "pip<25" >/dev/null
  # torch first, on its own, so that nothing else can pull a different (CUDA) build.
  "$venv/bin/python" -m pip install --quiet torch==2.13.0 -c "$root/tests/constraints-webui.txt"
  "$venv/bin/python" -m pip install --quiet -c "$root/tests/constraints-webui.txt" \
    -r "$root/tests/requirements-test.txt" -e "$root"
  echo "$want" > "$stamp"
fi
