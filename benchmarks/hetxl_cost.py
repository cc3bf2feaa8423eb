"""HET-XL training cost vs deterministic at the published 1,000 Monte Carlo samples.

Builds the MNIST demo network (half-width ResNet-18, 28 px, batch 128) with the
deterministic head and with HET-XL heads, and times one training step (forward, backward,
SGD update) of each in the same run, after a warmup, on the same random batch:

  deterministic              a linear head
  hetxl_s1000_per_example    1,000 samples, own noise per example (the [B, S, D] draw)
  hetxl_s1000_shared         1,000 samples shared across the batch (ub's HetSNGP setting)
  hetxl_s100_per_example     100 samples, own noise per example

The head computes `(z W + b) + (d ∘ ε_D) W + ε_R (Vᵀ W)` (`layers.HetXLDense`); with shared
samples the diagonal term is `ε_D diag(d_b) W`, one [S, D] draw and no [B, S, D] tensor.

  .venv/bin/python benchmarks/hetxl_cost.py [--steps 20 --warmup 3]

Last line: {"step_time_ratio": {"<variant>": ...}, "step_s": {...}, "batch": 128, ...}
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from keras_unc.backbones.resnet import resnet
from keras_unc.methods import heads
from keras_unc.methods.deterministic import Deterministic
from keras_unc.methods.hetxl import HetXL
from keras_unc.training.network import build_network

VARIANTS = {
  "deterministic": None,
  "hetxl_s1000_per_example": dict(train_mc_samples=1000, share_samples_across_batch=False),
  "hetxl_s1000_shared": dict(train_mc_samples=1000, share_samples_across_batch=True),
  "hetxl_s100_per_example": dict(train_mc_samples=100, share_samples_across_batch=False),
}


def make_network(variant):
  keras.backend.clear_session()
  keras.utils.set_random_seed(0)
  args = VARIANTS[variant]
  if args is None:
    method = Deterministic()
  else:
    method = HetXL(
      het_head=heads.Heteroscedastic(num_factors=10, test_mc_samples=10, xl=True, **args)
    )
  backbone = lambda **kw: resnet(depth=18, width=0.5, stem="imagenet", **kw)  # noqa: E731
  return build_network(method, 10, (28, 28, 1), backbone=backbone, image_size=28, num_channels=1)


def step_seconds(network, images, labels, steps, warmup):
  optimizer = keras.optimizers.SGD(1e-3)

  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      logits = network(x, training=True)["logits"][:, 0]
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    grads = tape.gradient(loss, network.trainable_variables)
    optimizer.apply(grads, network.trainable_variables)
    return loss

  for _ in range(warmup):
    step(images, labels).numpy()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step(images, labels).numpy()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--batch", type=int, default=128)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  images = tf.constant(rng.integers(0, 256, (args.batch, 28, 28, 1)).astype("uint8"))
  labels = tf.constant(rng.integers(0, 10, args.batch).astype("int32"))
  found = {}
  for name in VARIANTS:
    found[name] = step_seconds(make_network(name), images, labels, args.steps, args.warmup)
    print(f"  {name}: {found[name] * 1e3:.1f} ms/step", flush=True)
  base = found["deterministic"]
  print(f"\nbatch {args.batch}, median of {args.steps} steps, {os.cpu_count()} CPU cores")
  print(f"{'variant':26s} {'ms/step':>8s} {'x deterministic':>16s}")
  for name, sec in found.items():
    print(f"{name:26s} {sec * 1e3:8.1f} {sec / base:16.2f}")
  print(
    json.dumps(
      {
        "step_time_ratio": {k: round(v / base, 3) for k, v in found.items()},
        "step_s": {k: round(v, 4) for k, v in found.items()},
        "batch": args.batch,
        "steps": args.steps,
      }
    )
  )


if __name__ == "__main__":
  main()
