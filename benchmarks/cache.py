"""Uncertainty-module training through a frozen ViT-S/16 vs from the feature cache.

One run measures, on the same N images (scikit-learn's 8x8 digits, upsampled to 224 px
and repeated to 3 channels inside the model; without augmentation, so both paths see the
same data), the `url` method (pred-net + losspred_order) trained with the one trainer:

  * backbone: `build_network.freeze_backbone=True`, every step runs ViT-S/16 forward;
  * cached: `python -m keras_unc cache` once (timed separately), then
    `train.dataset='cached:DIR'`, which trains the head alone on the stored embeddings.

An epoch's time is taken from Keras epoch boundaries (one Keras epoch = one data epoch
here), after a first epoch that absorbs tracing. Both paths then train the same steps from
the same initialisation, so the final head weights and the metrics of the full networks on
held-out images (accuracy, NLL, mean uncertainty, R@1 and R-AUROC of the embeddings;
the held-out images go through the shared frozen backbone once) must agree. The ViT is randomly initialised (offline machine):
the timing does not depend on its weights.

  .venv/bin/python benchmarks/cache.py [--n 256 --batch 64 --eval_n 256]

Last line: {"ratio": ..., "backbone_epoch_s": ..., "cached_epoch_s": ...}
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin
import keras
import numpy as np

from keras_unc import config
from keras_unc.data import get_source
from keras_unc.methods import Deterministic
from keras_unc.metrics import r_auroc, recall_at_one
from keras_unc.runtime import checkpoints
from keras_unc.training import feature_cache, optim
from keras_unc.training import trainer as train_lib
from keras_unc.training.network import build_network


class EpochTimer(keras.callbacks.Callback):
  """Wall time of every Keras epoch."""

  def __init__(self):
    super().__init__()
    self.times = []

  def __deepcopy__(self, memo):  # Gin deep-copies bound values: keep this very object.
    return self

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.times.append(time.perf_counter() - self._start)


def parse(args, params, finalize=True):
  gin.clear_config()
  steps = args.n // args.batch
  config.parse(
    ["base.gin", "backbones/vit_s16.gin"],
    [
      "train.dataset = 'digits'",
      f"train.split = 'train[:{args.n}]'",
      "train.preprocess = ''",
      "train.method = @URL()",
      "URL.unc_width = 256",
      "URL.unc_depth = 2",
      f"train.batch_size = {args.batch}",
      f"train.eval_every = {steps}",
      f"train.steps_per_execution = {steps}",
      "train.evaluators = []",
      "train.export_at_end = False",
      "train.verbose = 0",
      "train.log_every = 1000000",
      *params,
    ],
    finalize=finalize,
  )


def pretrained_checkpoint(args, folder):
  """A ViT-S/16 + linear classifier checkpoint (random weights) to cache from."""
  parse(args, [])
  network = build_network(Deterministic(head_init="glorot_uniform"), 10, (8, 8, 1))
  optimizer = optim.make_optimizer(1)
  optimizer.build(network.trainable_variables)
  return checkpoints.Checkpointer(folder).save(0, network, optimizer)


def run(args, workdir, epochs, params):
  """Trains `epochs` data epochs; returns (epoch times, full network)."""
  steps = args.n // args.batch
  timer = EpochTimer()
  parse(
    args,
    [
      f"train.total_steps = {epochs * steps}",
      f"train.checkpoint_every = {epochs * steps}",
      *params,
    ],
    finalize=False,
  )
  gin.bind_parameter("train.callbacks", [timer])
  gin.finalize()
  result = train_lib.train(workdir, "train")
  return timer.times, result["network"]


def evaluate(head, embeddings, labels):
  found = head(embeddings, training=False)
  probs, unc, emb = (
    np.asarray(found[k], np.float64) for k in ("probs", "uncertainty", "embedding")
  )
  r1, _ = recall_at_one(emb, labels)
  return {
    "accuracy": float(np.mean(probs.argmax(1) == labels)),
    "nll": float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)))),
    "mean_uncertainty": float(unc.mean()),
    "r1": float(r1),
    "r_auroc": float(r_auroc(emb, labels, unc)),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--n", type=int, default=256, help="training images")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--epochs", type=int, default=2, help="epochs of both compared runs")
  parser.add_argument(
    "--timing_epochs",
    type=int,
    default=10,
    help="epochs of the cached run whose median epoch time is reported",
  )
  parser.add_argument("--eval_n", type=int, default=256, help="held-out images evaluated")
  args = parser.parse_args()
  if args.n % args.batch or args.epochs < 2:
    parser.error(
      "--n must be a multiple of --batch, and --epochs >= 2 (the first epoch "
      "traces the step function and is not timed)."
    )
  tmp = tempfile.mkdtemp(prefix="cache_bench_")
  ckpt = pretrained_checkpoint(args, os.path.join(tmp, "pretrained"))
  common = [f"train.warm_start = '{ckpt}'", "train.seed = 1"]

  backbone_times, frozen = run(
    args,
    os.path.join(tmp, "backbone"),
    args.epochs,
    common
    + [
      "build_network.freeze_backbone = True",
      "train.adapt_checkpoint = True",
      "build_network.separate_head = True",
    ],
  )  # Same layers and init; head reachable.
  print(f"backbone run: epochs {[round(t, 2) for t in backbone_times]} s", flush=True)
  parse(args, common + [f"cache_features.batch_size = {args.batch}", "cache_features.verbose = 0"])
  t0 = time.perf_counter()
  built = feature_cache.cache_features(os.path.join(tmp, "cache"))
  cache_s = time.perf_counter() - t0
  cached = common + [f"train.dataset = 'cached:{built['path']}'"]
  _, from_cache = run(args, os.path.join(tmp, "cached"), args.epochs, cached)
  cached_times, _ = run(args, os.path.join(tmp, "cached_timing"), args.timing_epochs, cached)
  print(
    f"cache built in {cache_s:.1f} s; cached run: epochs {[round(t, 4) for t in cached_times]} s",
    flush=True,
  )

  backbone_s = float(np.median(backbone_times[1:]))
  cached_s = float(np.median(cached_times[1:]))
  # Held-out images through the (identical, frozen) backbone once, then each trained head.
  images, labels = get_source("digits").arrays(f"test[:{args.eval_n}]")
  embed = feature_cache.extractor(frozen)
  embeddings = np.concatenate(
    [
      np.asarray(embed(images[i : i + args.batch].astype(np.float32))["embedding"])
      for i in range(0, len(images), args.batch)
    ]
  )
  metrics = {
    "backbone": evaluate(frozen.head_network, embeddings, labels),
    "cached": evaluate(from_cache.head_network, embeddings, labels),
  }
  gaps = {
    part: max(
      float(np.max(np.abs(a.numpy() - b.numpy())))
      if a.shape
      else abs(float(a.numpy()) - float(b.numpy()))
      for a, b in zip(getattr(frozen, part).variables, getattr(from_cache, part).variables)
      if a.dtype.startswith("float")
    )
    for part in ("backbone", "head_network")
  }  # Same structure: same variable order.
  weight_gap = gaps["head_network"]

  rows = [
    ("one epoch through the frozen ViT-S/16", f"{backbone_s:.3f} s"),
    ("one epoch from the cache", f"{cached_s * 1e3:.2f} ms"),
    ("speed-up (target >= 180x)", f"{backbone_s / cached_s:.0f}x"),
    ("building the cache (1 epoch, once)", f"{cache_s:.2f} s"),
    ("max |head weight difference|", f"{weight_gap:.2e}"),
    ("max |backbone weight difference|", f"{gaps['backbone']:.2e}"),
  ]
  width = max(len(r[0]) for r in rows)
  print(
    f"\nViT-S/16 @ 224 px, url (pred-net, losspred_order), {args.n} images, batch "
    f"{args.batch}, {args.epochs} epochs; median epoch after the first."
  )
  print("-" * (width + 16))
  for name, value in rows:
    print(f"{name:<{width}}  {value:>12}")
  print("-" * (width + 16))
  print(f"{'held-out metric':<{width - 12}}  {'backbone':>12}  {'cached':>12}")
  for k in metrics["backbone"]:
    print(f"{k:<{width - 12}}  {metrics['backbone'][k]:>12.5f}  {metrics['cached'][k]:>12.5f}")
  print(
    json.dumps(
      {
        "ratio": round(backbone_s / cached_s, 1),
        "backbone_epoch_s": round(backbone_s, 4),
        "cached_epoch_s": round(cached_s, 5),
        "cache_build_s": round(cache_s, 2),
        "max_head_weight_diff": weight_gap,
        "metrics": metrics,
      }
    )
  )


if __name__ == "__main__":
  main()
