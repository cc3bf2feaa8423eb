#!/usr/bin/env bash
# Runs ON a Cloud TPU VM worker (started by `launch/tpu_vm.sh train`, from ~/keras_unc):
# downloads the bucket workdir (so a rerun, even on a new VM, resumes), trains with
# `--strategy=tpu`, and uploads the workdir to the bucket every SYNC_EVERY seconds and when
# the trainer exits. Only worker 0 touches the bucket. SIGTERM (preemption) is passed to
# the trainer, which saves a checkpoint and exits 143; the final upload carries it.
# Environment: RUN_NAME, WORKDIR_GS, GIN_FILE (required); TPU_FLAG (local), SYNC_EVERY
# (300), TFDS_DATA_DIR, EXTRA_ARGS, LOCAL_WORKDIR ($HOME/workdirs/$RUN_NAME).
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then sed -n '2,9p' "$0"; exit 0; fi
: "${RUN_NAME:?}" "${WORKDIR_GS:?}" "${GIN_FILE:?}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
META=http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number
WORKER="$(curl -sf -H Metadata-Flavor:Google "$META" || echo 0)"
LOCAL="${LOCAL_WORKDIR:-$HOME/workdirs/$RUN_NAME}"
mkdir -p "$LOCAL"
sync_up() { if [[ "$WORKER" == 0 ]]; then gcloud storage rsync -r "$LOCAL" "$WORKDIR_GS" || true; fi; }
if [[ "$WORKER" == 0 ]]; then
  gcloud storage rsync -r "$WORKDIR_GS" "$LOCAL" 2>/dev/null || echo "no workdir in $WORKDIR_GS yet"
fi
( while sleep "${SYNC_EVERY:-300}"; do sync_up; done ) &
SYNC=$!
export TFDS_DATA_DIR="${TFDS_DATA_DIR:-}"
# shellcheck disable=SC2086  # EXTRA_ARGS is a list of flags.
.venv/bin/python -m keras_unc.main --gin_file="$GIN_FILE" --workdir="$LOCAL" --strategy=tpu \
  --tpu="${TPU_FLAG:-local}" ${EXTRA_ARGS:-} &
PY=$!
trap 'kill -TERM "$PY" 2>/dev/null || true' TERM INT
set +e
wait "$PY"; CODE=$?
# A trapped signal ends `wait` early while the trainer is still saving: wait again.
while kill -0 "$PY" 2>/dev/null; do wait "$PY"; CODE=$?; done
set -e
kill "$SYNC" 2>/dev/null || true
sync_up
echo "keras_unc exited with $CODE; workdir $WORKDIR_GS"
exit "$CODE"
