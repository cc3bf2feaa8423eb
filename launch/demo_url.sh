#!/usr/bin/env bash
# URL demo: MNIST ResNet pretrained on train[:50000] (demo/url_mnist_backbone.gin; trained
# here if missing) -> feature cache of its frozen backbone on the held-out train[50000:] ->
# pred-net uncertainty module trained from the cache -> zero-shot R@1 and R-AUROC on
# Fashion-MNIST. (The main demo's model saw all 60k images: nothing would be held out.)
#   launch/demo_url.sh [PRETRAINED_WORKDIR] [extra absl flags for the training run]
# PRETRAIN_STEPS (default 1400, the main demo's) bounds the pretraining when it is missing;
# CACHE_DIR and URL_WORKDIR move the cache and the run (default workdirs/demo_url{_cache,}).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash launch/setup.sh
PRE="${1:-$REPO/workdirs/demo_url_backbone}"
shift || true
CACHE="${CACHE_DIR:-$REPO/workdirs/demo_url_cache}"
WORK="${URL_WORKDIR:-$REPO/workdirs/demo_url}"
PY=.venv/bin/python

newest() { ls -d "$1"/checkpoints/ckpt-* 2>/dev/null | grep -v '\.tmp' | sort | tail -1; }
if [ -z "$(newest "$PRE")" ]; then
  echo "== 1/3 pretraining the MNIST ResNet on train[:50000] in $PRE"
  $PY -m keras_unc.main --gin_file=gin_configs/demo/url_mnist_backbone.gin --workdir="$PRE" \
    --mode=train \
    --gin_param="train.total_steps=${PRETRAIN_STEPS:-1400}"
else
  echo "== 1/3 reusing the pretrained MNIST ResNet in $PRE"
fi
CKPT="$(newest "$PRE")"

echo "== 2/3 caching the frozen backbone's embeddings and logits in $CACHE"
$PY -m keras_unc cache --gin_file=gin_configs/demo/url_mnist.gin --workdir="$CACHE" \
  --gin_param="train.warm_start='$CKPT'"

echo "== 3/3 training the pred-net from the cache, evaluating on Fashion-MNIST"
$PY -m keras_unc.main --gin_file=gin_configs/demo/url_mnist_cache.gin --workdir="$WORK" \
  --gin_param="train.dataset='cached:$CACHE'" --gin_param="train.warm_start='$CKPT'" "$@"
echo "R@1 = retrieval/fashion_mnist_r1, R-AUROC = retrieval/fashion_mnist_auroc_correct" \
  "(above; also $WORK/metrics.jsonl). SavedModel (full network, images in): $WORK/export"
