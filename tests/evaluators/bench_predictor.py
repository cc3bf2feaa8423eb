"""Throughput of `Predictor` vs a bare `network.predict` (not a test: timings are noisy).

    .venv/bin/python -m tests.evaluators.bench_predictor [width]

Both read MNIST test (10k) through the same pipeline with batch 512; the Predictor also
returns the labels from the same pass. Prints images/s of each and their ratio.
"""

import functools
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from keras_unc.backbones.vit import vit
from keras_unc.data import get_source, make_dataset
from keras_unc.evaluators import Predictor
from keras_unc.methods import Deterministic
from keras_unc.training.network import build_network


def main(width=64, reps=5, batch_size=512, split="test"):
  keras.utils.set_random_seed(0)
  backbone = functools.partial(
    vit,
    "Ti/4",
    width=width,
    depth=2,
    mlp_dim=2 * width,
    num_heads=2,
    pooling="gap",
    posemb="sincos2d",
  )
  net = build_network(
    Deterministic(), 10, (28, 28, 1), backbone=backbone, image_size=28, num_channels=1
  )
  source = get_source("mnist")
  images = make_dataset(source, split, "", batch_size, train=False).map(
    lambda x, y: tf.cast(x, tf.float32)
  )
  predictor = Predictor(net, batch_size)
  net.predict(images, verbose=0)  # Warm-up: tracing.
  predictor("mnist", split)
  bare, ours = [], []
  for _ in range(reps):  # Interleaved, best of `reps`.
    t = time.perf_counter()
    want = net.predict(images, verbose=0)
    bare.append(time.perf_counter() - t)
    predictor.reset()
    t = time.perf_counter()
    got, labels = predictor("mnist", split)
    ours.append(time.perf_counter() - t)
  n = source.num_examples(split)
  assert np.array_equal(labels, source.arrays(split)[1])
  assert np.allclose(got["probs"], want["probs"], atol=1e-6)
  print(
    f"{n} images: bare predict {n / min(bare):.0f} img/s, Predictor "
    f"{n / min(ours):.0f} img/s, ratio {min(bare) / min(ours):.3f}"
  )


if __name__ == "__main__":
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 64)
