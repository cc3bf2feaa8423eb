#!/usr/bin/env bash
# Set-up (as launch/demo.sh), the style check (ruff format + ruff check, configured in
# pyproject.toml), then the whole test suite. Extra arguments go to pytest.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash launch/setup.sh
if ! .venv/bin/ruff format --check --quiet . || ! .venv/bin/ruff check --quiet .; then
  echo "Style check failed: run '.venv/bin/ruff format . && .venv/bin/ruff check --fix .'" \
    "(see CONTRIBUTING.md), then review the diff." >&2
  exit 1
fi
# Two pytest workers (pytest-xdist): the suite is mostly single-threaded TensorFlow, so on the
# 2-core build machine this nearly halves the wall time. KERAS_UNC_TEST_WORKERS=0 runs it in
# one process.
exec .venv/bin/python -m pytest -q -n "${KERAS_UNC_TEST_WORKERS:-2}" --durations=20 "$@"
