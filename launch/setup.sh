#!/usr/bin/env bash
# Creates .venv if missing, installs keras_unc (+ test extras) and fetches the offline data.
# Idempotent and fast when nothing changed: the install is skipped while setup.cfg, setup.py and pyproject.toml are unchanged.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.keras_unc-installed"
want="$(sha256sum setup.cfg setup.py pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing keras_unc and dependencies into .venv (TensorFlow is large: ~1 min)"
  # uv (from PyPI) resolves and installs the same versions as pip (pip freeze is identical)
  # in 20-70 s where pip takes 2-4 min on this machine: the biggest fixed cost of a fresh
  # CI run. Falls back to pip where uv cannot be installed. --compile-bytecode as pip does:
  # with PYTHONDONTWRITEBYTECODE set (as on the build machines) every process would
  # otherwise compile TensorFlow from source on import (+9 min of CPU over the test suite).
  if .venv/bin/python -m pip install -q uv && [ -x .venv/bin/uv ]; then
    .venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python -e ".[test]"
  else
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[test]"
  fi
  echo "$want" > "$stamp"
fi
PIP="$REPO/.venv/bin/pip" bash launch/fetch_data.sh
