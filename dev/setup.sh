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
  # torch first, on its own, so that nothing else can pull a different (CUDA) build.
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$root/tests/constraints-webui.txt")
  # (this machine's pip configuration names index folders that may not exist; pip warns once per package about them)
  run_pip() { "${pip[@]}" "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
  run_pip torch==2.13.0
  run_pip -r "$root/tests/requirements-test.txt" -e "$root"
  "$venv/bin/python" -c "import torch, diffusers, transformers, gradio, onnxruntime" \
    || { echo "[sd-train] the environment is incomplete; see the pip output above" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
