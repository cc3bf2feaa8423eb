"""Serving the weight-averaged network: SWA/EMA averages and SWAG samples with BatchNorm
statistics recomputed (swa_gaussian `bn_update`). The state, the formulas and the references:
`keras_unc.training.weight_average`.
"""

from __future__ import annotations

import logging

import keras
import numpy as np
import tensorflow as tf

from keras_unc.data import make_dataset
from keras_unc.training.deep_ensemble import DeepEnsemble
from keras_unc.training.weight_average import of, rebuilding, schedule

__all__ = ["bn_update", "of", "schedule", "serving_network"]

log = logging.getLogger(__name__)


def _base_variables(network, state):
  return network.variables[: len(network.variables) - len(state.variables)]


def _copy_into(target, network, state, weights):
  """Copies `network`'s variables into `target` (a rebuilt copy), `weights` for the averaged
  ones.
  """
  base = _base_variables(network, state)
  if len(base) != len(target.variables):
    raise RuntimeError(f"Rebuilt network has {len(target.variables)} variables, not {len(base)}.")
  by_id = {id(v): w for v, w in zip(state.sources, weights)}
  for src, dst in zip(base, target.variables):
    dst.assign(by_id[id(src)] if id(src) in by_id else np.asarray(src))


def bn_update(network, batches):
  """swa_gaussian `bn_update`: every BatchNorm's moving mean and variance become the
  example-weighted average of its batch statistics over `batches` (images), the network in
  training mode; every other variable (dropout seeds, GP statistics) is left as it was.
  """
  bns = [
    layer
    for layer in network._flatten_layers(include_self=False, recursive=True)  # noqa: SLF001
    if isinstance(layer, keras.layers.BatchNormalization)
  ]
  if not bns:
    return 0
  stats = {id(v) for b in bns for v in (b.moving_mean, b.moving_variance)}
  others = [v for v in network.variables if id(v) not in stats]
  saved = [np.asarray(v) for v in others]
  momenta = [b.momentum for b in bns]
  for b in bns:
    b.momentum = 0.0  # Moving statistics = this batch's statistics.
  forward = tf.function(lambda x: network(x, training=True))
  sums = [[np.zeros(b.moving_mean.shape), np.zeros(b.moving_variance.shape)] for b in bns]
  n = 0
  try:
    for images in batches:
      forward(tf.cast(images, tf.float32))
      size = int(images.shape[0])
      for acc, b in zip(sums, bns):
        acc[0] += size * np.asarray(b.moving_mean, np.float64)
        acc[1] += size * np.asarray(b.moving_variance, np.float64)
      n += size
  finally:
    for b, m in zip(bns, momenta):
      b.momentum = m
    for v, s in zip(others, saved):
      v.assign(s)
  if n:
    for acc, b in zip(sums, bns):
      b.moving_mean.assign(acc[0] / n)
      b.moving_variance.assign(acc[1] / n)
  return n


def _training_images(data, limit):
  seen = 0
  ds = make_dataset(
    data["source"], data["split"], data["preprocess"], data["batch_size"], train=False
  )
  for images, _ in ds:
    if limit is not None:
      images = images[: max(int(limit) - seen, 0)]
    if not images.shape[0]:
      return
    seen += int(images.shape[0])
    yield images


def serving_network(network, data):
  """The network to evaluate and export: `network` itself without averaging state or before
  the first collection; else the averaged network (SWA, EMA) or the stack of SWAG samples,
  with BatchNorm statistics recomputed on `data` (`source`, `split`, `preprocess`,
  `batch_size` of the training split). Cached until the state changes.
  """
  state = of(network)
  if state is None or float(state.count.numpy()) < 1:
    return network
  key = float(state.count.numpy())
  last = state._cache.variables  # (Not tracked: the copies are no part of the network.)
  if last and last[0][0] == key:
    return last[0][1]
  if state.kind == "swag":
    rng = np.random.default_rng(state.sample_seed)
    weights = [state.sample(rng) for _ in range(state.num_samples)]
  else:
    weights = [state.averaged()]
  with rebuilding():
    copies = (last and last[0][2]) or [network.weight_average_rebuild() for _ in weights]
  for copy, w in zip(copies, weights):
    _copy_into(copy, network, state, w)
    bn_update(copy, _training_images(data, state.bn_update_examples))
  if state.kind == "swag":
    images = keras.Input(tuple(network.inputs[0].shape[1:]), name="images")
    stack = DeepEnsemble(copies, state.uncertainty, name=f"swag_{len(copies)}")
    served = keras.Model(images, stack(images), name=f"swag_{network.name}")
  else:
    served = copies[0]
  log.info(
    "Weight averaging (%s): serving %s after %d collections%s.",
    state.kind,
    served.name,
    int(key),
    f", {len(copies)} samples (seed {state.sample_seed})" if state.kind == "swag" else "",
  )
  state._cache.variables = [(key, served, copies)]
  return served
