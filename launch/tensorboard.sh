#!/usr/bin/env bash
# TensorBoard on a workdir or a bucket path (gs://...: needs TensorFlow's GCS support,
# i.e. the venv's tensorflow, and gcloud credentials).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/tensorboard.sh LOGDIR [PORT]

  LOGDIR   a workdir (train/ and eval/ event folders inside), a folder of workdirs, or a
           gs:// path such as gs://my-bucket/keras_unc/RUN
  PORT     default $PORT or 6006

Environment: TENSORBOARD (default .venv/bin/tensorboard, else tensorboard on PATH),
DRY_RUN=1 prints the command.
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0 ;; "") usage >&2; exit 2 ;; esac
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TB="${TENSORBOARD:-$([[ -x "$REPO/.venv/bin/tensorboard" ]] && echo "$REPO/.venv/bin/tensorboard" || echo tensorboard)}"
cmd=("$TB" --logdir "$1" --port "${2:-${PORT:-6006}}" --bind_all)
if [[ "${DRY_RUN:-0}" == 1 ]]; then echo "${cmd[*]}"; exit 0; fi
[[ "$1" == *://* || -e "$1" ]] || { echo "tensorboard.sh: ERROR: $1 does not exist" >&2; exit 2; }
exec "${cmd[@]}"
