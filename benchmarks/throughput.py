"""Training throughput of keras_unc vs a plain `keras.Model.fit`, same architecture and data.

Both train the deterministic ViT-Ti/16 at 224 px on real MNIST digits (resized to 224 and
repeated to 3 channels inside the model) with AdamW. keras_unc runs its full trainer
(distributed input pipeline, checkpoint/NaN/TensorBoard callbacks, its gin defaults for
XLA and steps_per_execution); the baseline is the textbook `compile` + `fit` on a
`tf.data` pipeline. Throughput is timed between optimizer steps after a warmup, so
compilation is excluded from both.

  .venv/bin/python benchmarks/throughput.py [--steps 12 --warmup 4 --batch 32]

Last line: {"keras_unc_img_s": ..., "plain_img_s": ..., "ratio": ...}
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

from keras_unc import config
from keras_unc.backbones import vit
from keras_unc.data import get_source
from keras_unc.layers import InputAdapter
from keras_unc.training import trainer as train_lib


class StepTimer(keras.callbacks.Callback):
  """Images/s between the first batch end after `warmup` steps and the end of training."""

  def __init__(self, warmup, batch):
    super().__init__()
    self.warmup, self.batch, self.start = warmup, batch, None

  def on_train_batch_end(self, batch, logs=None):
    step = int(self.model.optimizer.iterations.numpy())
    if self.start is None and step >= self.warmup:
      self.start = (step, time.perf_counter())
    self.end = (step, time.perf_counter())

  def images_per_second(self):
    steps = self.end[0] - self.start[0]
    return steps * self.batch / (self.end[1] - self.start[1])


def run_keras_unc(args):
  total = args.warmup + args.steps
  config.parse(
    ["backbones/vit_ti16.gin", "base.gin"],
    [
      "train.dataset = 'mnist'",
      "train.evaluators = []",
      f"train.batch_size = {args.batch}",
      f"train.total_steps = {total}",
      "train.export_at_end = False",
      "train.verbose = 0",
      "train.jit_compile = True",
      "train.steps_per_execution = 1",
      "train.log_every = 1000000",
      "make_optimizer.learning_rate = 1e-4",
    ],
  )
  timer = StepTimer(args.warmup, args.batch)
  with tempfile.TemporaryDirectory() as workdir:
    train_lib.train(workdir, "train", callbacks=[timer])
  return timer.images_per_second()


def run_plain(args):
  images, labels = get_source("mnist").arrays("train")
  ds = (
    tf.data.Dataset.from_tensor_slices((images, labels))
    .shuffle(60000, seed=0)
    .repeat()
    .batch(args.batch, drop_remainder=True)
    .map(lambda x, y: (tf.cast(x, tf.float32), y))
    .prefetch(tf.data.AUTOTUNE)
  )
  inputs = keras.Input((28, 28, 1))
  x = InputAdapter(224, num_channels=3)(inputs)
  x = vit("Ti/16", image_size=224, num_channels=3, pooling="token", posemb="learn")(x)
  model = keras.Model(inputs, keras.layers.Dense(10)(x))
  model.compile(
    optimizer=keras.optimizers.AdamW(1e-4, weight_decay=1e-4),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
  )
  timer = StepTimer(args.warmup, args.batch)
  model.fit(ds, steps_per_epoch=args.warmup + args.steps, epochs=1, callbacks=[timer], verbose=0)
  return timer.images_per_second()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=12, help="timed steps")
  parser.add_argument("--warmup", type=int, default=4, help="untimed steps (compilation)")
  parser.add_argument("--batch", type=int, default=32, help="global batch size")
  args = parser.parse_args()
  plain = run_plain(args)
  ours = run_keras_unc(args)
  rows = [("plain keras.Model.fit", plain), ("keras_unc train()", ours)]
  print(
    f"\nViT-Ti/16 @224px, batch {args.batch}, {args.steps} timed steps, {os.cpu_count()} CPU cores"
  )
  print(f"{'run':<24}{'images/s':>10}")
  for name, value in rows:
    print(f"{name:<24}{value:>10.2f}")
  print(f"{'ratio (keras_unc/plain)':<24}{ours / plain:>10.3f}")
  print(
    json.dumps(
      {
        "keras_unc_img_s": round(ours, 3),
        "plain_img_s": round(plain, 3),
        "ratio": round(ours / plain, 4),
        "batch": args.batch,
        "timed_steps": args.steps,
      }
    )
  )


if __name__ == "__main__":
  main()
