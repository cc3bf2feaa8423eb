"""The checkpointed state of weight averaging (`training.averaging` serves it): SWAG (the
`swag` method) and the SWA / EMA options any method can take.

- **SWA** (Izmailov et al., "Averaging Weights Leads to Wider Optima and Better
  Generalization", UAI 2018): the running mean of the weights collected every `every` steps
  after `start * total_steps`; served with BatchNorm statistics recomputed on the training split
  (swa_gaussian `swag/utils.py::bn_update`).
- **EMA**: `mean <- m * mean + (1 - m) * w` after every step from `start` (the first update copies
  the weights, as Keras' `use_ema`); served with BatchNorm statistics recomputed as SWA's (Keras'
  `use_ema` keeps the training statistics; recomputing them matches the averaged weights).
- **SWAG** (Maddox et al., "A Simple Baseline for Bayesian Uncertainty in Deep Learning", NeurIPS
  2019; swa_gaussian `swag/posteriors/swag.py::SWAG.collect_model`, `sample_fullrank`): first
  and second moments and the K-column deviation matrix `D` (deviation of each collected model
  from the running mean *including* it, the newest K kept, oldest first) of the trainable
  weights. The served network stacks S samples
  `theta = mean + sqrt(scale) * (sigma * z1 + D^T z2 / sqrt(K - 1))`,
  `sigma = sqrt(max(sq_mean - mean^2, var_clamp))`, `z1 ~ N(0, I_P)`, `z2 ~ N(0, I_rank)`,
  `rank = min(collected, K)`, K = `max_num_models` even while fewer are collected (as the
  reference). `scale = 0.5` is the reference's `sample(scale=0.5, cov=True)` and the paper's
  `theta_SWA + sigma z1 / sqrt(2) + D z2 / sqrt(2 (K - 1))`. Each sample gets BatchNorm
  statistics recomputed on the training split, and the samples become the members of one
  network (`training.deep_ensemble.DeepEnsemble`: `logits [B, S, C]`, `probs` their mean), so the
  export holds S fixed samples drawn with the recorded `sample_seed` and costs S forwards.

The state (non-trainable float32 variables of a `WeightAverage` layer attached to the network
by `build_network` as `network.weight_average`) is part of `network.variables`, so the
trainer's checkpoints hold it and a resumed run continues it bit-identically. The trainer
updates it inside the train step (`TrainModel.train_step`, also under `steps_per_execution`
and XLA) and evaluates / exports `serving_network(...)`: the averaged or sampled network (the
training weights keep training). Deviations from the references, on purpose: steps instead of
epochs (collection every `every` steps); BatchNorm statistics from one pass over the training
split without augmentation (`train=False`, as the post-training fit), batch variance biased
(Keras) where torch's running variance is unbiased; the learning-rate schedule is the run's
(`make_optimizer.decay = 'swa'` is swa_gaussian's, `keras_unc.training.optim`). EMA is this
state rather than Keras' `use_ema` so that it starts at `start`, is served with recomputed
BatchNorm statistics, and is one code path with SWA and SWAG.
"""

from __future__ import annotations

import contextlib
import logging
import math

import gin
import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

KINDS = ("swa", "ema")
_REBUILDING = [False]  # Networks built for serving carry no state of their own.


@gin.configurable
def weight_averaging(kind=None, start=0.75, every=1, ema_momentum=0.999, bn_update_examples=None):
  """The weight-averaging option of any method (gin `weight_averaging.kind = 'swa'`).

  Args:
    kind: None (off), "swa" or "ema".
    start: fraction of `train.total_steps` after which averaging starts, in [0, 1).
    every: SWA: collect the weights every `every` steps after the start (EMA: every step).
    ema_momentum: EMA decay m in (0, 1).
    bn_update_examples: BatchNorm recomputation uses at most this many training examples
      (None: the whole training split, as swa_gaussian's `bn_update`).
  """
  if kind is None:
    return None
  if kind not in KINDS:
    raise ValueError(f"weight_averaging.kind={kind!r}: choose None, 'swa' or 'ema'.")
  if not 0.0 <= start < 1.0:
    raise ValueError(f"weight_averaging.start={start} must be in [0, 1) (a fraction of steps).")
  if int(every) < 1:
    raise ValueError(f"weight_averaging.every={every} must be >= 1 (steps).")
  if not 0.0 < ema_momentum < 1.0:
    raise ValueError(f"weight_averaging.ema_momentum={ema_momentum} must be in (0, 1).")
  return dict(
    kind=kind,
    start=float(start),
    every=int(every),
    momentum=float(ema_momentum),
    bn_update_examples=bn_update_examples,
  )


def settings_of(method):
  """The averaging of `method`: its own (SWAG: `method.averaging`) or the gin option."""
  own = getattr(method, "averaging", None)
  option = weight_averaging()
  if own is not None and option is not None:
    raise ValueError(
      f"{method.name} averages weights itself (SWAG); unset weight_averaging.kind "
      f"(={option['kind']!r})."
    )
  return own if own is not None else option


class _Refs:
  """Holds the averaged variables without Keras tracking them as the state's own."""

  def __init__(self, variables):
    self.variables = list(variables)


class WeightAverage(keras.layers.Layer):
  """Checkpointed averaging state of a network's trainable weights (see the module docstring).

  Args:
    variables: the network's trainable variables, averaged in this order.
    kind: "swa", "ema" or "swag".
    start, every, momentum: as `weight_averaging` (SWAG: `swag_start`, `collect_every`).
    max_num_models: SWAG's K (columns of D).
    num_samples, scale, var_clamp, sample_seed: SWAG's sampling (see `sample`).
    bn_update_examples: see `weight_averaging`.
  """

  def __init__(
    self,
    variables,
    kind,
    start=0.75,
    every=1,
    momentum=0.999,
    max_num_models=20,
    num_samples=10,
    scale=0.5,
    var_clamp=1e-30,
    sample_seed=0,
    bn_update_examples=None,
    **kwargs,
  ):
    super().__init__(**kwargs)
    self.kind, self.start, self.momentum = kind, start, momentum
    self.every_setting, self.every = every, int(every or 1)  # None: set by `schedule`.
    self.max_num_models, self.num_samples = int(max_num_models), int(num_samples)
    self.scale, self.var_clamp, self.sample_seed = scale, var_clamp, int(sample_seed)
    self.bn_update_examples = bn_update_examples
    self._sources = _Refs(variables)
    self.start_step = None  # Set by `schedule` (the trainer knows total_steps).
    state = dict(trainable=False, aggregation="only_first_replica", dtype="float32")
    self.count = self.add_weight(shape=(), initializer="zeros", name="count", **state)
    self.means, self.sq_means, self.devs = [], [], []
    for i, v in enumerate(self._sources.variables):
      shape = tuple(v.shape)
      self.means.append(
        self.add_weight(shape=shape, initializer="zeros", name=f"mean_{i}", **state)
      )
      if kind == "swag":
        self.sq_means.append(
          self.add_weight(shape=shape, initializer="zeros", name=f"sq_mean_{i}", **state)
        )
        self.devs.append(
          self.add_weight(
            shape=(self.max_num_models, *shape), initializer="zeros", name=f"dev_{i}", **state
          )
        )
    self.built = True
    self.uncertainty = "msp"  # The served SWAG stack's score (`attach`: the method's).
    self._cache = _Refs([])  # [(count, served network, copies)] of the last `serving_network`.

  @property
  def sources(self):
    return self._sources.variables

  def call(self, inputs):
    return inputs

  def update(self, step):
    """In-graph: averages the weights after update `step` (1-based) when it is due."""
    if self.start_step is None:
      return
    step = tf.cast(step, tf.int64)
    start = tf.constant(self.start_step, tf.int64)
    due = step > start
    if self.kind != "ema":
      due = tf.logical_and(due, tf.math.floormod(step - start, self.every) == 0)
    tf.cond(due, self._collect, lambda: tf.no_op())

  def _collect(self):
    n = tf.convert_to_tensor(self.count)
    for i, v in enumerate(self.sources):
      w = tf.cast(tf.convert_to_tensor(v), tf.float32)
      mean = tf.convert_to_tensor(self.means[i])
      if self.kind == "ema":  # The first update copies the weights.
        m = tf.where(n > 0, tf.constant(self.momentum, tf.float32), 0.0)
        self.means[i].assign(m * mean + (1.0 - m) * w)
        continue
      new_mean = mean * n / (n + 1.0) + w / (n + 1.0)
      self.means[i].assign(new_mean)
      if self.kind == "swag":
        sq = tf.convert_to_tensor(self.sq_means[i])
        self.sq_means[i].assign(sq * n / (n + 1.0) + tf.square(w) / (n + 1.0))
        dev = (w - new_mean)[None]
        old = tf.convert_to_tensor(self.devs[i])
        row = tf.cast(tf.minimum(n, self.max_num_models - 1.0), tf.int32)
        placed = tf.tensor_scatter_nd_update(old, [[row]], dev)
        rolled = tf.concat([old[1:], dev], axis=0)
        self.devs[i].assign(tf.where(n < self.max_num_models, placed, rolled))
    self.count.assign_add(1.0)
    return tf.no_op()

  # -- NumPy side: samples and the averaged weights ------------------------------------------

  def averaged(self):
    """The averaged weights (NumPy, in `sources` order)."""
    return [np.asarray(m) for m in self.means]

  def sample(self, rng):
    """One SWAG sample (NumPy, in `sources` order): swa_gaussian `sample_fullrank(scale,
    cov=True)` with `z1` then `z2` drawn from `rng` over the flattened concatenated weights.
    """
    mean = np.concatenate([np.asarray(m, np.float64).ravel() for m in self.means])
    sq = np.concatenate([np.asarray(s, np.float64).ravel() for s in self.sq_means])
    rank = min(int(self.count.numpy()), self.max_num_models)
    dev = np.concatenate(
      [np.asarray(d, np.float64)[:rank].reshape(rank, -1) for d in self.devs], axis=1
    )
    z1 = rng.standard_normal(mean.shape)
    z2 = rng.standard_normal(rank)
    flat = swag_sample(mean, sq, dev, z1, z2, self.scale, self.max_num_models, self.var_clamp)
    out, at = [], 0
    for m in self.means:
      size = int(np.prod(m.shape))
      out.append(flat[at : at + size].reshape(m.shape).astype(np.float32))
      at += size
    return out


def swag_sample(mean, sq_mean, dev, z1, z2, scale, max_num_models, var_clamp=1e-30):
  """`mean + sqrt(scale) * (sqrt(clamp(sq_mean - mean^2)) * z1 + dev^T z2 / sqrt(K - 1))`
  over flattened weights (`dev [rank, P]`); see the module docstring.
  """
  var = np.maximum(sq_mean - mean**2, var_clamp)
  rand = np.sqrt(var) * z1 + dev.T @ z2 / math.sqrt(max_num_models - 1)
  return mean + math.sqrt(scale) * rand


def attach(method, network, rebuild):
  """Called by `build_network`: attaches the averaging state (if `method` or the gin option
  asks for it) as `network.weight_average`; `rebuild()` builds the serving copies.
  """
  if _REBUILDING[0]:
    return
  settings = settings_of(method)
  if settings is None:
    return
  settings = dict(settings)
  network.weight_average = WeightAverage(
    network.trainable_variables, name="weight_average", **settings
  )
  network.weight_average.uncertainty = method.uncertainty
  network.weight_average_rebuild = rebuild


def of(network):
  """The `WeightAverage` of `network`, or None."""
  return getattr(network, "weight_average", None)


def schedule(network, total_steps, cached=False):
  """Sets the first averaging step from `total_steps` (the trainer calls this)."""
  state = of(network)
  if state is None:
    return
  if cached:
    raise ValueError(
      f"Weight averaging ({state.kind}) averages the whole network, but train.dataset is a "
      "feature cache (head-only checkpoints): train on the image dataset."
    )
  state.start_step = int(math.floor(state.start * total_steps))
  if state.every_setting is None:  # SWAG's default: the last K collections span the phase.
    state.every = max(1, (total_steps - state.start_step) // state.max_num_models)
  due = (
    total_steps - state.start_step
    if state.kind == "ema"
    else ((total_steps - state.start_step) // state.every)
  )
  if due < 1:
    raise ValueError(
      f"Weight averaging ({state.kind}) would collect nothing: it starts after step "
      f"{state.start_step} of {total_steps} and collects every {state.every} steps; lower "
      "the start fraction or the collection interval."
    )


@contextlib.contextmanager
def rebuilding():
  """Networks built inside this block (the serving copies) get no averaging state."""
  _REBUILDING[0] = True
  try:
    yield
  finally:
    _REBUILDING[0] = False
