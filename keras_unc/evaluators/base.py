"""Evaluators see only the network's output dict, so each metric is written once.

An evaluator has a `name` and `evaluate(predict) -> {"<prefix>/<metric>": value}` where
`predict(dataset, split, preprocess)` returns `(outputs dict of NumPy arrays, labels)`;
predictions are cached per evaluation round so evaluators can share a dataset.
"""

import numpy as np
import tensorflow as tf

from keras_unc.data import get_source, make_dataset


class Predictor:
  """Runs a network over evaluation splits once per round, caching the outputs."""

  def __init__(self, network, batch_size=512):
    self.network = network
    self.batch_size = batch_size
    self._cache = {}
    self._datasets = {}

  def reset(self):
    self._cache.clear()

  def _dataset(self, key):
    if key not in self._datasets:  # Built once, reused every round.
      name, split, preprocess = key
      source = get_source(name)
      ds = make_dataset(source, split, preprocess, self.batch_size, train=False)
      self._datasets[key] = ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
    return self._datasets[key]

  def __call__(self, dataset, split, preprocess=""):
    key = (dataset, split, preprocess)
    if key not in self._cache:
      ds = self._dataset(key)
      labels = np.concatenate([y.numpy() for _, y in ds])
      outputs = self.network.predict(ds.map(lambda x, y: x), verbose=0)
      self._cache[key] = ({k: np.asarray(v) for k, v in outputs.items()}, labels)
    return self._cache[key]


class Evaluator:
  """Base class: subclasses set `name` and implement `evaluate`."""

  name = "evaluator"

  def evaluate(self, predict):
    raise NotImplementedError
