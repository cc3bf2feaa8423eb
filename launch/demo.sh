#!/usr/bin/env bash
# The main job: a small ResNet on real MNIST, evaluated on MNIST test and on
# Fashion-MNIST as out-of-distribution; writes TensorBoard logs, metrics.jsonl and a SavedModel.
#   launch/demo.sh [WORKDIR] [extra absl flags, e.g. --gin_param=train.total_steps=100]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash launch/setup.sh
WORKDIR="${1:-$REPO/workdirs/demo_mnist}"
shift || true
.venv/bin/python -m keras_unc.main --gin_file=gin_configs/demo/mnist.gin --workdir="$WORKDIR" "$@"
echo "Serve it: .venv/bin/python -c \"import tensorflow as tf; m = tf.saved_model.load('$WORKDIR/export'); print(m.signatures['serving_default'])\""
