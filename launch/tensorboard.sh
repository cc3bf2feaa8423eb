#!/usr/bin/env bash
# TensorBoard on a workdir (or a bucket path): launch/tensorboard.sh WORKDIR [PORT]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "$REPO/.venv/bin/tensorboard" --logdir "${1:?usage: launch/tensorboard.sh WORKDIR [PORT]}" --port "${2:-6006}" --bind_all
