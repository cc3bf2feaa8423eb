#!/usr/bin/env bash
# Trains keras_unc on a Cloud TPU VM: create the VM, install the package on every worker,
# run `python -m keras_unc.main --strategy=tpu --tpu=local` on every worker, TensorBoard on
# the bucket. Run from your workstation (gcloud installed and authenticated).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/tpu_vm.sh STEP...      (steps run in the order given)

Steps:
  create       gcloud compute tpus tpu-vm create (SPOT=1: a spot VM)
  install      copy this checkout to every worker; venv with tensorflow-tpu + keras_unc
  train        start training on every worker in the background (log: ~/keras_unc.log)
  logs         follow worker 0's training log
  tensorboard  TensorBoard on the bucket workdir, here (launch/tensorboard.sh)
  delete       delete the TPU VM
  all          create install train

Parameters (environment variables):
  TPU_NAME          TPU VM name                                   (required)
  ZONE              e.g. us-central2-b                            (required)
  BUCKET            gs://your-bucket, holds the workdir           (required for train, tensorboard)
  GIN_FILE          experiment config   (default gin_configs/experiments/ub_imagenet/deterministic.gin)
  RUN_NAME          run name; WORKDIR_GS=$BUCKET/keras_unc/$RUN_NAME   (default: GIN_FILE's name)
  PROJECT           gcloud project                                (default: gcloud's)
  ACCELERATOR_TYPE  default v4-8 (v5litepod-8: set RUNTIME_VERSION=v2-alpha-tpuv5-lite)
  RUNTIME_VERSION   TPU software version                          (default tpu-ubuntu2204-base)
  TF_TPU            pip requirement for TensorFlow on TPU         (default tensorflow-tpu==2.20.*)
  TFDS_DATA_DIR     TFDS data on GCS, e.g. gs://your-bucket/tensorflow_datasets
  TRAIN_WORKERS     workers that run the trainer                  (default all)
  TPU_FLAG          --tpu value                                   (default local)
  EXTRA_ARGS        more flags for keras_unc.main, e.g. "--gin_param=train.total_steps=1000"
  SYNC_EVERY        seconds between workdir uploads to the bucket (default 300)
  SPOT=1            create a spot (preemptible) VM
  DRY_RUN=1         print the commands instead of running them

The trainer writes its workdir on the VM's disk (checkpoints are written atomically with
local renames, which GCS does not offer); worker 0 mirrors it to WORKDIR_GS every
SYNC_EVERY seconds and when training ends or is preempted (SIGTERM saves a checkpoint
first), and a rerun of `train` (on a new VM too) first downloads WORKDIR_GS, so training
resumes from the newest checkpoint in the bucket.

Example:
  TPU_NAME=unc-v4 ZONE=us-central2-b BUCKET=gs://my-bucket \
    TFDS_DATA_DIR=gs://my-bucket/tensorflow_datasets launch/tpu_vm.sh all
  TPU_NAME=unc-v4 ZONE=us-central2-b BUCKET=gs://my-bucket launch/tpu_vm.sh tensorboard
USAGE
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "tpu_vm.sh: ERROR: $*" >&2; exit 2; }
quote() {  # Shell-quotes one word only where needed (readable dry runs).
  if [[ "$1" =~ ^[A-Za-z0-9_./=:,@+%-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
run() {  # Prints the command (DRY_RUN=1) or runs it.
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    local sep=""
    for word in "$@"; do printf '%s' "$sep"; quote "$word"; sep=" "; done
    echo
  else
    "$@"
  fi
}

[[ $# -ge 1 ]] || { usage >&2; exit 2; }
case "$1" in -h|--help|help) usage; exit 0 ;; esac

: "${TPU_NAME:?set TPU_NAME (the TPU VM name); see launch/tpu_vm.sh --help}"
: "${ZONE:?set ZONE (e.g. us-central2-b); see launch/tpu_vm.sh --help}"
GIN_FILE="${GIN_FILE:-gin_configs/experiments/ub_imagenet/deterministic.gin}"
RUN_NAME="${RUN_NAME:-$(basename "$GIN_FILE" .gin)}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
TF_TPU="${TF_TPU:-tensorflow-tpu==2.20.*}"
TRAIN_WORKERS="${TRAIN_WORKERS:-all}"
TPU_FLAG="${TPU_FLAG:-local}"
SYNC_EVERY="${SYNC_EVERY:-300}"
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && WHERE+=(--project="$PROJECT")

workdir_gs() {
  [[ "${BUCKET:-}" == gs://* ]] || die "set BUCKET=gs://your-bucket (the workdir lives there)"
  echo "${BUCKET%/}/keras_unc/$RUN_NAME"
}

step_create() {
  local extra=()
  [[ "${SPOT:-0}" == 1 ]] && extra+=(--spot)
  run "${GCLOUD[@]}" create "$TPU_NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR_TYPE" \
    --version="$RUNTIME_VERSION" "${extra[@]}"
}

step_install() {
  local tarball="${TMPDIR:-/tmp}/keras_unc-src.tgz"
  # This checkout as it is (uncommitted edits included), without venv, data or outputs.
  run tar czf "$tarball" -C "$REPO" --exclude=.venv --exclude=.git --exclude=./data \
    --exclude=./workdirs .
  run "${GCLOUD[@]}" scp "$tarball" "$TPU_NAME":keras_unc-src.tgz "${WHERE[@]}" --worker=all
  # tensorflow-tpu provides TensorFlow; keras_unc's other requirements are installed
  # without letting pip pull the CPU `tensorflow` wheel over it.
  run "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="set -e
    rm -rf ~/keras_unc && mkdir -p ~/keras_unc && tar xzf ~/keras_unc-src.tgz -C ~/keras_unc
    cd ~/keras_unc && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q '$TF_TPU' -f https://storage.googleapis.com/libtpu-tf-releases/index.html
    .venv/bin/pip install -q 'keras>=3.15' 'tensorflow-datasets>=4.9' 'gin-config>=0.5' \
      'absl-py>=2.0' tensorboard numpy scipy scikit-learn matplotlib
    .venv/bin/pip install -q --no-deps -e .
    .venv/bin/python -c 'import tensorflow as tf; print(tf.__version__, tf.config.list_physical_devices())'"
}

step_train() {
  local gs env
  gs="$(workdir_gs)"
  # launch/tpu_vm_worker.sh (installed with the checkout) runs on every worker: it
  # downloads the bucket workdir (resume), trains, and uploads the workdir periodically
  # and at the end (worker 0 only).
  env="RUN_NAME=$(printf '%q' "$RUN_NAME") WORKDIR_GS=$(printf '%q' "$gs")"
  env+=" GIN_FILE=$(printf '%q' "$GIN_FILE") TPU_FLAG=$(printf '%q' "$TPU_FLAG")"
  env+=" SYNC_EVERY=$(printf '%q' "$SYNC_EVERY") TFDS_DATA_DIR=$(printf '%q' "${TFDS_DATA_DIR:-}")"
  env+=" EXTRA_ARGS=$(printf '%q' "${EXTRA_ARGS:-}")"
  run "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker="$TRAIN_WORKERS" \
    --command="cd ~/keras_unc && $env nohup bash launch/tpu_vm_worker.sh > ~/keras_unc.log 2>&1 < /dev/null &"
  echo "Training started on $TPU_NAME ($gs); follow: launch/tpu_vm.sh logs; TensorBoard: launch/tpu_vm.sh tensorboard"
}

step_logs() {
  run "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=0 --command="tail -n 100 -f ~/keras_unc.log"
}

step_tensorboard() {
  run bash "$REPO/launch/tensorboard.sh" "$(workdir_gs)"
}

step_delete() {
  run "${GCLOUD[@]}" delete "$TPU_NAME" "${WHERE[@]}" --quiet
}

for step in "$@"; do
  case "$step" in
    create|install|train|logs|tensorboard|delete) "step_$step" ;;
    all) step_create; step_install; step_train ;;
    *) usage >&2; die "unknown step '$step'" ;;
  esac
done
