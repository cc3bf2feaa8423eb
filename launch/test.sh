#!/usr/bin/env bash
# Set-up (as launch/demo.sh) then the whole test suite. Extra arguments go to pytest.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash launch/setup.sh
export KERAS_UNC_DATA_DIR="${KERAS_UNC_DATA_DIR:-$REPO/data}"
exec .venv/bin/python -m pytest -q "$@"
