#!/usr/bin/env bash
# Trains one job over several machines with MultiWorkerMirroredStrategy: writes TF_CONFIG
# for every worker from a host list and starts them (locally, or over ssh).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/multi_worker.sh [extra flags for keras_unc.main]

Parameters (environment variables):
  HOSTS        comma-separated host:port of every worker, chief (task 0) first (required)
  GIN_FILE     experiment config                                              (required)
  WORKDIR      output folder; written by the chief only (the others write a private scratch
               folder); rerun the job to resume                               (required)
  TASK_INDEX   run only this worker, here (one command per machine, e.g. from a scheduler);
               without it every worker is started: locally when its host is this machine
               (localhost, 127.0.0.1 or `hostname`), else over $SSH
  SSH          remote shell for other hosts                                   (default ssh)
  REMOTE_REPO  keras_unc checkout on the other hosts                          (default: this path)
  PYTHON       interpreter          (default .venv/bin/python, else python3)
  DRY_RUN=1    print the TF_CONFIG and command of every worker instead of running them

Every worker runs the same command; a SIGTERM on any worker makes all of them save a
checkpoint at the same step and exit 143 (PreemptionCheckpointHandler). If a worker dies,
stop the others and rerun the whole job: it resumes from the chief's newest checkpoint.

Examples:
  HOSTS=127.0.0.1:12345,127.0.0.1:12346 GIN_FILE=gin_configs/testing/tiny.gin \
    WORKDIR=/tmp/mw launch/multi_worker.sh                 # two workers on this machine
  HOSTS=node1:2222,node2:2222 GIN_FILE=gin_configs/demo/mnist.gin WORKDIR=/shared/mnist \
    launch/multi_worker.sh                                 # node2 started over ssh
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "multi_worker.sh: ERROR: $*" >&2; exit 2; }
: "${HOSTS:?set HOSTS=host1:port,host2:port (chief first); see launch/multi_worker.sh --help}"
: "${GIN_FILE:?set GIN_FILE (an experiment config); see launch/multi_worker.sh --help}"
: "${WORKDIR:?set WORKDIR (output folder); see launch/multi_worker.sh --help}"
PYTHON="${PYTHON:-$([[ -x "$REPO/.venv/bin/python" ]] && echo "$REPO/.venv/bin/python" || echo python3)}"
IFS=, read -r -a hosts <<< "$HOSTS"
for h in "${hosts[@]}"; do
  [[ "$h" =~ ^[A-Za-z0-9._-]+:[0-9]+$ ]] || die "HOSTS entry '$h' is not host:port"
done
workers="$(printf '"%s",' "${hosts[@]}")"
tf_config() {  # TF_CONFIG of worker $1.
  echo "{\"cluster\": {\"worker\": [${workers%,}]}, \"task\": {\"type\": \"worker\", \"index\": $1}}"
}
args=(-m keras_unc.main --gin_file="$GIN_FILE" --workdir="$WORKDIR" --strategy=multi_worker "$@")

if [[ -n "${TASK_INDEX:-}" ]]; then
  [[ "$TASK_INDEX" =~ ^[0-9]+$ && "$TASK_INDEX" -lt "${#hosts[@]}" ]] \
    || die "TASK_INDEX=$TASK_INDEX is not in 0..$((${#hosts[@]} - 1))"
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "TF_CONFIG='$(tf_config "$TASK_INDEX")' $PYTHON ${args[*]}"; exit 0
  fi
  cd "$REPO"
  TF_CONFIG="$(tf_config "$TASK_INDEX")" exec "$PYTHON" "${args[@]}"
fi

pids=()
for i in "${!hosts[@]}"; do
  host="${hosts[$i]%:*}"
  config="$(tf_config "$i")"
  if [[ "$host" == localhost || "$host" == 127.0.0.1 || "$host" == "$(hostname)" ]]; then
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
      echo "TF_CONFIG='$config' $PYTHON ${args[*]}"; continue
    fi
    (cd "$REPO" && TF_CONFIG="$config" exec "$PYTHON" "${args[@]}") &
  else
    remote="cd $(printf '%q' "${REMOTE_REPO:-$REPO}") && TF_CONFIG=$(printf '%q' "$config") $(printf '%q' "$PYTHON")$(printf ' %q' "${args[@]}")"
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
      echo "${SSH:-ssh} $host $remote"; continue
    fi
    ${SSH:-ssh} "$host" "$remote" &
  fi
  pids+=($!)
done
[[ "${DRY_RUN:-0}" == 1 ]] && exit 0
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT  # Preemption: all save, exit 143.
status=0
for pid in "${pids[@]}"; do
  while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done
  wait "$pid" || { code=$?; [[ $status == 0 ]] && status=$code; }
done
exit "$status"
