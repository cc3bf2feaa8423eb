"""Uncertainty-module training through a frozen ViT-S/16 vs from the feature cache.

One run measures, on the same N images (scikit-learn's 8x8 digits, upsampled to 224 px
and repeated to 3 channels inside the model; without augmentation, so both paths see the
same data), the `url` method (pred-net + losspred_order) trained with the one trainer:

  * backbone: `build_network.freeze_backbone=True`, every step runs ViT-S/16 forward;
  * cached: `python -m keras_unc cache` once (timed separately), then
    `train.dataset='cached:DIR'`, which trains the head alone on the stored embeddings
    (timed streamed from disk, the default; compared in memory, whose permutations are
    those of the backbone run).

An epoch's time is taken from Keras epoch boundaries (one Keras epoch = one data epoch
here), after a first epoch that absorbs tracing. Both paths then train the same steps from
the same initialisation, so the final head weights and the metrics of the full networks on
held-out images (accuracy, NLL, mean uncertainty, R@1 and R-AUROC of the embeddings;
the held-out images go through the shared frozen backbone once) must agree. The ViT is randomly initialised (offline machine):
the timing does not depend on its weights.

  .venv/bin/python benchmarks/cache.py [--n 256 --batch 64 --eval_n 256]

Last line: {"ratio": ..., "backbone_epoch_s": ..., "cached_epoch_s": ...}

Scale run (`--scale`, instead of the above; `--quick` for a smoke run of seconds): two
synthetic caches of N and 10N examples (random D-dim embeddings and C logits, written by
the cache's own shard writer, `keras_unc.data.cached.write_shard`), and the same head
(Dense(1024, gelu) -> Dense(C), Adam, batch B) trained for S steps, each run in its own
subprocess that reports its peak RSS (VmHWM) and median step time:

  * streamed from the N and the 10N cache (`cached:DIR`, the default): the peak RSS of the
    10N run over the N run's is `peak_rss_ratio_10x` (target <= 1.10);
  * step time: one process trains the head in blocks of steps alternating between an
    in-memory array of the 10N cache (`tf.data` over a NumPy array, no shuffle) and the
    streamed 10N cache, so both see the same machine load; the array's median step time
    over the streamed one's is `step_time_ratio` (target >= 0.9);
  * in memory through the pipeline (`cached_source.in_memory = True`) on both caches, for
    the RSS it costs.

  .venv/bin/python benchmarks/cache.py --scale [--scale_n 4096 --dim 768 --classes 1000]

Last line: {"peak_rss_ratio_10x": ..., "step_time_ratio": ..., ...}
"""

import argparse
import json
import os
import shutil
import subprocess
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


# ------------------------------------------------------------------ scale run


def synthetic_cache(path, n, args):
  """A cache of `n` random examples through the cache's own shard writer."""
  from keras_unc.data.cached import write_cache

  def arrays(epoch, start, stop):
    rng = np.random.default_rng([epoch, start])
    return {
      "embedding": rng.normal(size=(stop - start, args.dim)).astype(np.float32),
      "logits": rng.normal(size=(stop - start, args.classes)).astype(np.float32),
      "label": rng.integers(0, args.classes, stop - start),
    }

  return write_cache(
    path,
    arrays,
    num_examples=n,
    embedding_dim=args.dim,
    num_classes=args.classes,
    epochs=args.cache_epochs,
    shard_size=args.shard_size,
    dtype=args.dtype,
  )


def peak_rss_mb():
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  import resource  # Not Linux: the same figure from getrusage.

  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _dataset(args, mode):
  import tensorflow as tf

  from keras_unc.data import get_source, make_dataset
  from keras_unc.data.cached import open_cache

  if mode == "array":
    x, y = get_source(f"cached:{args.train_from}").arrays("train")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(args.batch, True)
    return ds.prefetch(tf.data.AUTOTUNE)
  source = open_cache(args.train_from, in_memory=mode == "memory")
  return make_dataset(
    source, "train", "", args.batch, train=True, shuffle_buffer=args.shuffle_buffer
  )


def train_head(args):
  """(In the subprocess.) Trains the head from `args.train_from` in `args.mode` (`compare`:
  blocks of steps alternating between the in-memory array and the streamed cache, so both
  see the same machine load); prints one JSON line with the median step time of each
  dataset (the first fifth of every block, which fills the buffers, left out) and the
  peak RSS.
  """
  import keras

  keras.utils.set_random_seed(0)
  modes = ["array", "streamed"] if args.mode == "compare" else [args.mode]
  data = {m: _dataset(args, m) for m in modes}
  head = keras.Sequential(
    [
      keras.Input((args.dim,)),
      keras.layers.Dense(1024, activation="gelu"),
      keras.layers.Dense(args.classes),
    ]
  )
  head.compile(
    optimizer=keras.optimizers.Adam(1e-3),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
  )
  times = {m: [] for m in modes}

  class Timer(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
      self.t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
      self.block.append(time.perf_counter() - self.t)

  timer = Timer()
  rounds = 3 if args.mode == "compare" else 1
  for _ in range(rounds):
    for m in modes:
      timer.block = []
      head.fit(
        data[m], steps_per_epoch=args.steps // rounds, epochs=1, verbose=0, callbacks=[timer]
      )
      times[m] += timer.block[len(timer.block) // 5 :]
  found = {f"{m}_step_ms": float(np.median(t) * 1e3) for m, t in times.items()}
  print(json.dumps({**found, "peak_rss_mb": peak_rss_mb()}), flush=True)


def scale(args):
  tmp = tempfile.mkdtemp(prefix="cache_scale_")
  sizes = {"1x": args.scale_n, "10x": 10 * args.scale_n}
  caches, mb = {}, {}
  t0 = time.perf_counter()
  for name, n in sizes.items():
    caches[name] = synthetic_cache(os.path.join(tmp, name), n, args)
    mb[name] = (
      sum(os.path.getsize(os.path.join(caches[name], f)) for f in os.listdir(caches[name])) / 2**20
    )
  write_s = time.perf_counter() - t0
  print(
    f"synthetic caches written in {write_s:.1f} s: "
    + ", ".join(f"{k} {sizes[k]} examples {mb[k]:.0f} MiB" for k in sizes),
    flush=True,
  )
  runs = [("streamed", "1x"), ("streamed", "10x"), ("compare", "10x")]
  if not args.quick:
    runs += [("memory", "1x"), ("memory", "10x")]
  found = {}
  for mode, size in runs:
    cmd = [
      sys.executable,
      os.path.abspath(__file__),
      f"--train_from={caches[size]}",
      f"--mode={mode}",
      *[
        f"--{k}={getattr(args, k)}" for k in ("dim", "classes", "batch", "steps", "shuffle_buffer")
      ],
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    found[mode, size] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{mode:>8} {size:>3}: {found[mode, size]}", flush=True)
  rss_ratio = found["streamed", "10x"]["peak_rss_mb"] / found["streamed", "1x"]["peak_rss_mb"]
  compare = found["compare", "10x"]
  step_ratio = compare["array_step_ms"] / compare["streamed_step_ms"]
  print(
    f"\nHead Dense(1024)->Dense({args.classes}) on {args.dim}-d {args.dtype} embeddings, batch "
    f"{args.batch}, {args.steps} steps per run, shuffle buffer {args.shuffle_buffer} records."
  )
  print(f"{'run (own process)':<34}{'examples':>10}{'peak RSS MiB':>14}{'step ms':>10}")
  print("-" * 68)
  labels = {
    "streamed": "streamed (cached:DIR)",
    "memory": "in memory (in_memory=True)",
    "compare": "array + streamed, alternating",
  }
  for (mode, size), r in found.items():
    step = r.get(f"{mode}_step_ms", r.get("streamed_step_ms"))
    print(f"{labels[mode]:<34}{sizes[size]:>10}{r['peak_rss_mb']:>14.0f}{step:>10.2f}")
  print("-" * 68)
  print(
    f"alternating blocks, 10x cache: in-memory array {compare['array_step_ms']:.2f} ms/step, "
    f"streamed {compare['streamed_step_ms']:.2f} ms/step"
  )
  print(f"peak RSS streamed 10x / 1x (target <= 1.10): {rss_ratio:.3f}")
  print(f"step time array / streamed (target >= 0.9):  {step_ratio:.3f}")
  shutil.rmtree(tmp, ignore_errors=True)
  print(
    json.dumps(
      {
        "peak_rss_ratio_10x": round(rss_ratio, 3),
        "step_time_ratio": round(step_ratio, 3),
        "examples": sizes,
        "cache_mib": {k: round(v, 1) for k, v in mb.items()},
        "runs": {f"{m}_{s}": r for (m, s), r in found.items()},
        "dim": args.dim,
        "classes": args.classes,
        "dtype": args.dtype,
        "batch": args.batch,
        "steps": args.steps,
        "quick": args.quick,
      }
    )
  )


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
  scale_args = parser.add_argument_group("scale run (--scale)")
  scale_args.add_argument("--scale", action="store_true", help="the scale run instead")
  scale_args.add_argument("--quick", action="store_true", help="tiny scale run (seconds)")
  scale_args.add_argument("--scale_n", type=int, default=4096, help="examples of the 1x cache")
  scale_args.add_argument("--dim", type=int, default=768)
  scale_args.add_argument("--classes", type=int, default=1000)
  scale_args.add_argument("--dtype", default="float16")
  scale_args.add_argument("--cache_epochs", type=int, default=1)
  scale_args.add_argument("--shard_size", type=int, default=1024)
  scale_args.add_argument("--steps", type=int, default=90, help="head steps per run")
  scale_args.add_argument("--shuffle_buffer", type=int, default=2048)
  scale_args.add_argument("--train_from", help=argparse.SUPPRESS)  # The subprocess.
  scale_args.add_argument("--mode", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.train_from:
    return train_head(args)
  if args.scale or args.quick:
    if args.quick:
      args.scale_n, args.dim, args.classes, args.steps = 256, 32, 10, 30
      args.batch, args.shard_size, args.shuffle_buffer = 32, 128, 128
    elif "--batch" not in " ".join(sys.argv):
      args.batch = 256
    return scale(args)
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
  # In memory: the same permutations as the backbone run, so the same head; timed streamed.
  exact = cached + ["cached_source.in_memory = True"]
  _, from_cache = run(args, os.path.join(tmp, "cached"), args.epochs, exact)
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
