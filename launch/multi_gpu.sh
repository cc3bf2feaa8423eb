#!/usr/bin/env bash
# Trains on every local GPU with MirroredStrategy (one process, one replica per GPU).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/multi_gpu.sh [extra flags for keras_unc.main]

Parameters (environment variables):
  GIN_FILE     experiment config                      (required)
  WORKDIR      output folder; rerun to resume          (required)
  GPUS         e.g. 0,1,2,3: sets CUDA_VISIBLE_DEVICES (default: all GPUs)
  PYTHON       interpreter                             (default .venv/bin/python, else python3)
  DRY_RUN=1    print the command instead of running it

The global batch (train.batch_size) is split over the GPUs and must be a multiple of
their number (times the method's ensemble size); precision: --gin_param=set_precision.policy='mixed_float16'.

Example:
  GIN_FILE=gin_configs/demo/mnist.gin WORKDIR=workdirs/mnist_4gpu launch/multi_gpu.sh \
    --gin_param=train.batch_size=512
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${GIN_FILE:?set GIN_FILE (an experiment config); see launch/multi_gpu.sh --help}"
: "${WORKDIR:?set WORKDIR (output folder); see launch/multi_gpu.sh --help}"
PYTHON="${PYTHON:-$([[ -x "$REPO/.venv/bin/python" ]] && echo "$REPO/.venv/bin/python" || echo python3)}"
[[ -n "${GPUS:-}" ]] && export CUDA_VISIBLE_DEVICES="$GPUS"
cmd=("$PYTHON" -m keras_unc.main --gin_file="$GIN_FILE" --workdir="$WORKDIR" --strategy=mirrored "$@")
cd "$REPO"
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-<all>} ${cmd[*]}"
  exit 0
fi
if command -v nvidia-smi >/dev/null; then
  echo "GPUs: $(nvidia-smi -L | wc -l) (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-all})"
fi
exec "${cmd[@]}"
