"""Every uncertainty method on the MNIST demo, in one run: quality and training cost.

Each method trains with its `gin_configs/demo/mnist_<method>.gin` (half-width ResNet-18,
MNIST train, Fashion-MNIST test as OOD) for the same number of steps through the one
trainer, then reports test accuracy, NLL, ECE (15 bins), OOD AUROC (method's own
uncertainty, OOD positive) and the median train-step time relative to deterministic in
this run. The forward FLOPs of each network (TF profiler) give BatchEnsemble's expected
cost ratio.

  .venv/bin/python benchmarks/methods.py [--steps 500] [--methods sngp,batchensemble]

Last line: {"methods": {"<name>": {"accuracy": ..., "nll": ..., "ece": ...,
"ood_auroc": ..., "step_time_ratio": ..., "flop_ratio": ...}, ...}, "steps": ...}
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
import tensorflow as tf

from keras_unc import config
from keras_unc.training import trainer as train_lib

METHODS = (
  "deterministic",
  "batchensemble",
  "sngp",
  "heteroscedastic",
  "hetxl",
  "mc_dropout",
  "shallow_ensemble",
  "plex",
  "hetsngp",
  "be_sngp",
)


class ChunkTimer(keras.callbacks.Callback):
  """Wall time per optimizer step between batch-end callbacks, after a warmup."""

  def __init__(self, warmup):
    super().__init__()
    self.warmup, self.marks = warmup, []

  def on_train_batch_end(self, batch, logs=None):
    step = int(self.model.optimizer.iterations.numpy())
    if step >= self.warmup:
      self.marks.append((step, time.perf_counter()))

  def step_seconds(self):
    per = [
      (t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(self.marks, self.marks[1:]) if s1 > s0
    ]
    return float(np.median(per))


def forward_flops(network, input_shape):
  """Float operations of one forward pass at batch 1 (TF profiler on the graph)."""
  fn = tf.function(lambda x: network(x, training=False))
  graph = fn.get_concrete_function(tf.TensorSpec([1, *input_shape], tf.float32)).graph
  opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  opts["output"] = "none"
  return tf.compat.v1.profiler.profile(graph, options=opts).total_float_ops


def run(name, steps, warmup, workdir):
  gin_file = "demo/mnist.gin" if name == "deterministic" else f"demo/mnist_{name}.gin"
  gin.clear_config()
  keras.backend.clear_session()
  config.parse(
    [gin_file],
    [
      f"train.total_steps = {steps}",
      f"train.eval_every = {steps}",
      f"train.checkpoint_every = {steps}",
      "train.verbose = 0",
      "train.export_at_end = False",
    ],
  )
  timer = ChunkTimer(warmup)
  start = time.perf_counter()
  result = train_lib.train(workdir, "train_and_eval", callbacks=[timer])
  m = result["metrics"]
  return {
    "accuracy": m["test/accuracy"],
    "nll": m["test/nll"],
    "ece": m["test/ece"],
    "ood_auroc": m["ood_fashion_mnist/auroc"],
    "step_s": timer.step_seconds(),
    "flops": forward_flops(result["network"], (28, 28, 1)),
    "wall_s": time.perf_counter() - start,
  }


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=500)
  parser.add_argument("--warmup", type=int, default=100)
  parser.add_argument("--methods", default=",".join(METHODS))
  args = parser.parse_args()
  names = ["deterministic"] + [n for n in args.methods.split(",") if n != "deterministic"]
  found = {}
  with tempfile.TemporaryDirectory() as root:
    for name in names:
      found[name] = run(name, args.steps, args.warmup, os.path.join(root, name))
      print(f"  {name}: {found[name]}", flush=True)
  base = found["deterministic"]
  print(f"\n{args.steps} steps of batch 128 each, same run, {os.cpu_count()} CPU cores")
  print(
    f"{'method':18s} {'acc':>7s} {'NLL':>7s} {'ECE':>7s} {'OOD AUROC':>9s} "
    f"{'step s':>7s} {'step x':>7s} {'FLOP x':>7s}"
  )
  out = {}
  for name, r in found.items():
    out[name] = {
      "accuracy": round(r["accuracy"], 4),
      "nll": round(r["nll"], 4),
      "ece": round(r["ece"], 4),
      "ood_auroc": round(r["ood_auroc"], 4),
      "step_time_ratio": round(r["step_s"] / base["step_s"], 3),
      "flop_ratio": round(r["flops"] / base["flops"], 3),
    }
    o = out[name]
    print(
      f"{name:18s} {o['accuracy']:7.4f} {o['nll']:7.4f} {o['ece']:7.4f} "
      f"{o['ood_auroc']:9.4f} {r['step_s']:7.3f} {o['step_time_ratio']:7.3f} "
      f"{o['flop_ratio']:7.3f}"
    )
  print(json.dumps({"methods": out, "steps": args.steps}))


if __name__ == "__main__":
  main()
