"""The post-training fit of methods that fit something on the training set after the last
step (last-layer Laplace): the trainer calls `fit(...)` once, before the last evaluation and
the export; the method's state lives in the network's variables and is checkpointed.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from keras_unc import config
from keras_unc.data import get_source, make_dataset

log = logging.getLogger(__name__)


def wants_fit(method) -> bool:
  """Whether `method` fits something after training (it has `fit_after_training`)."""
  return callable(getattr(method, "fit_after_training", None))


def _limited(split, limit):
  """`split` read as its first `limit` examples (`split[:N]` when it has no slice)."""
  if limit is None or "[" in split:
    return split
  return f"{split}[:{int(limit)}]"


def fit(method, network, *, dataset, split, preprocess, batch_size) -> bool:
  """Runs `method.fit_after_training(network, batches)`; True when it changed the network.

  `batches(role, split, limit)` streams `(embedding, labels)` NumPy batches of the
  network's `embedding` output on `dataset` (evaluation order, `preprocess` without
  augmentation randomness: `train=False`): role "fit" defaults to `split` (the training
  split), role "heldout" to `calibrate.split`.
  """
  if not wants_fit(method):
    return False
  if dataset.startswith("cached:"):
    raise ValueError(
      f"{method.name} fits on images after training, but train.dataset is the feature cache "
      f"{dataset!r}: train on the image dataset."
    )
  source = get_source(dataset)

  @tf.function(reduce_retracing=True)
  def embed(images):
    return network(tf.cast(images, tf.float32), training=False)["embedding"]

  def batches(role, which, limit):
    if which is None:
      which = split if role == "fit" else config.query("calibrate.split", None)
    if which is None:
      raise ValueError(
        f"{method.name}: no held-out split: set {type(method).__name__}.heldout_split or "
        "calibrate.split (e.g. 'train[55000:]')."
      )
    seen = 0
    data = make_dataset(source, _limited(which, limit), preprocess, batch_size, train=False)
    for images, labels in data:
      features, labels = np.asarray(embed(images)), np.asarray(labels)
      if limit is not None:
        features, labels = features[: limit - seen], labels[: limit - seen]
      seen += len(labels)
      if len(labels):
        yield features, labels
      if limit is not None and seen >= limit:
        return

  return bool(method.fit_after_training(network, batches))
