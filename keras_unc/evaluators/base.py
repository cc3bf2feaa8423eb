"""Evaluators see only the network's output dict, so each metric is written once.

An evaluator has a `name` and `evaluate(predict) -> {"<prefix>/<metric>": value}` where
`predict(dataset, split, preprocess)` returns `(outputs dict of NumPy arrays, labels)`;
predictions are cached per evaluation round so evaluators can share a dataset. An
evaluator may also implement `figures(predict) -> {name: RGBA uint8 array or matplotlib
figure}`, written by `runner.run_round` as PNG files and TensorBoard images.
"""

from __future__ import annotations

import gin
import keras
import numpy as np
import tensorflow as tf

from keras_unc.data import Source, get_source, make_dataset
from keras_unc.runtime import xla

LABELS = "__labels__"  # Key under which the labels travel through the predict function.
VALID = "__valid__"  # Key of the mask of real (not padding) rows.


def to_input_dtype(images, dtype):
  """Casts a batch of images to the network's input dtype.

  Float images (e.g. after a `resize` op) fed to an integer input (the uint8 SavedModel
  signature) are rounded and saturated, not truncated.
  """
  dtype = tf.as_dtype(dtype)
  if dtype.is_integer and images.dtype.is_floating:
    return tf.saturate_cast(tf.round(images), dtype)
  return tf.cast(images, dtype)


def pad_batches(ds, rows):
  """Pads every `(images, labels)` batch of `ds` to `rows` rows, adding a `valid` mask.

  All batches then have one static shape `[rows, ...]`: the predict function is traced
  and XLA-compiled once (a partial last batch would recompile, and TPUs need static
  shapes), as uncertainty-baselines and big_vision pad evaluation. Padding rows are zeros
  with `valid = False`.

  Args:
    ds: a dataset of `(images, labels)` batches of at most `rows` rows; `labels` any nest.
    rows: the padded batch size.

  Returns:
    A dataset of `(images, labels, valid)` with `valid` a boolean `[rows]`.
  """

  def pad(images, labels):
    n = tf.shape(images)[0]

    def fill(x):
      x = tf.pad(x, [[0, rows - n]] + [[0, 0]] * (x.shape.rank - 1))
      return tf.ensure_shape(x, [rows, *x.shape[1:]])

    return fill(images), tf.nest.map_structure(fill, labels), tf.range(rows) < n

  return ds.map(pad)


class _LabelledPredict(keras.Model):
  """Keras' own predict loop over padded `(images, labels, valid)` batches.

  `predict_step` runs the network on the images and passes the labels and the mask of
  real rows through, so one `predict` call reads every split once and keeps labels aligned
  with the outputs (distribution strategies and concatenation are Keras').
  """

  def __init__(self, network, image_dtype="float32", jit_compile=False):
    super().__init__(dtype="float32", name="labelled_predict")
    self.network = network
    self.image_dtype = image_dtype
    self.compile(jit_compile=jit_compile)
    xla.check_jit_compile(self, jit_compile, "Predictor.jit_compile")

  def predict_step(self, data):
    images, labels, valid = data
    outputs = self.network(to_input_dtype(images, self.image_dtype), training=False)
    # int32, not bool: MultiWorkerMirroredStrategy gathers predict outputs with collectives,
    # which take no bool (tests/scale/test_multi_worker.py evaluates on two workers).
    return {**outputs, LABELS: labels, VALID: tf.cast(valid, tf.int32)}


@gin.configurable(denylist=["network"])
class Predictor:
  """Runs a network over evaluation splits once per round, caching outputs and labels.

  Each `(dataset, split, preprocess)` is read in a single pass: batches of
  `(images, labels)` go through Keras' compiled predict function, which returns the
  network outputs together with the labels of the same batch. Every batch is padded to
  `batch_size` rows (rounded up to a multiple of the replicas) and the padding rows are
  dropped from the results (`pad_batches`): the function sees one static shape.

  Padding leaves the real rows' outputs unchanged for networks without inference noise
  (to float rounding). Methods that sample at inference draw noise for the padded batch:
  with TensorFlow's kernels a per-row draw `[B, ...]` (heteroscedastic heads) keeps the real
  rows' samples, while a draw over a member- or sample-tiled batch (MC dropout, Plex,
  rank-1, variational) gives the last batch's real rows other samples, equal in
  distribution; so does every normal draw under `jit_compile` (XLA's draws depend on the
  whole shape). Measured in `tests/evaluators/test_predictor.py`.

  Args:
    network: a Keras model (or any callable `network(images, training=False)` returning
      the output dict), or a `SavedModelNetwork` for exported models. Images are cast
      to the network's `image_dtype` attribute if it has one (uint8 for a SavedModel,
      float images rounded), else to float32.
    batch_size: evaluation batch size.
    jit_compile: XLA-compile the predict function.

  Call `predictor(dataset, split, preprocess="")` with a source name (`"digits"`,
  `"tfds:cifar10"`) or a `keras_unc.data.Source` instance (e.g. a soft-label adapter);
  it returns `(outputs, labels)`: a dict of NumPy arrays (`logits [N, M, C]`,
  `probs [N, C]`, `uncertainty [N]`, `embedding [N, D]`) and the labels as the dataset
  yields them (int `[N]`, soft `[N, C]` or multi-hot `[N, C]`).
  """

  def __init__(self, network, batch_size=512, jit_compile=False):
    self.network = network
    self.batch_size = batch_size
    self.jit_compile = jit_compile
    self._cache = {}
    self._datasets = {}
    self._model = None
    self.passes = 0  # Dataset passes run (one per cache miss); for tests and logging.

  def reset(self):
    """Forgets the cached predictions: the next round predicts again."""
    self._cache.clear()

  @staticmethod
  def _key(dataset, split, preprocess):
    name = dataset if isinstance(dataset, str) else ("source", id(dataset))
    return (name, split, preprocess)

  def on(self, network):
    """A new `Predictor` of `network` with this one's settings (e.g. for a served copy)."""
    return Predictor(network, self.batch_size, self.jit_compile)

  def _strategy(self):
    strategy = getattr(self.network, "distribute_strategy", None)
    return strategy or tf.distribute.get_strategy()

  def _dataset(self, key, dataset):
    if key not in self._datasets:  # Built once, reused every round.
      _, split, preprocess = key
      source = dataset if isinstance(dataset, Source) else get_source(dataset)
      ds = make_dataset(source, split, preprocess, self.batch_size, train=False)
      if ds.cardinality() == tf.data.UNKNOWN_CARDINALITY:  # e.g. generators: tell Keras.
        batches = -(-source.num_examples(split) // self.batch_size)
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
      replicas = self._strategy().num_replicas_in_sync  # Equal static per-replica batches.
      ds = pad_batches(ds, -(-self.batch_size // replicas) * replicas)
      self._datasets[key] = (ds, dataset)
    return self._datasets[key][0]

  def _predict_model(self):
    if self._model is None:
      with self._strategy().scope():
        self._model = _LabelledPredict(
          self.network, getattr(self.network, "image_dtype", "float32"), self.jit_compile
        )
    return self._model

  def __call__(self, dataset, split, preprocess="", cache=True):
    """`(outputs, labels)` of one split; `cache=False` does not keep a new prediction
    (for large one-off sets such as the 75 ImageNet-C configurations).
    """
    key = self._key(dataset, split, preprocess)
    if key in self._cache:
      return self._cache[key]
    ds = self._dataset(key, dataset)
    found = self._predict_model().predict(ds, verbose=0)
    self.passes += 1
    valid = np.asarray(found.pop(VALID), bool)
    labels = np.asarray(found.pop(LABELS))[valid]
    result = ({k: np.asarray(v)[valid] for k, v in found.items()}, labels)
    if cache:
      self._cache[key] = result
    return result


class Evaluator:
  """Base class: subclasses set `name` and implement `evaluate` (and maybe `figures`)."""

  name = "evaluator"

  def evaluate(self, predict: Predictor) -> dict[str, float]:
    """Metrics `{name: value}` computed from the predictor's output dicts."""
    raise NotImplementedError


def hard_labels(labels):
  """Integer labels `[N]`; soft or one-hot `[N, C]` labels become their argmax."""
  labels = np.asarray(labels)
  if labels.ndim == 2:
    return labels.argmax(axis=1)
  return labels


def softmax(logits):
  """Softmax over the last axis in float64 (member probabilities from `[N, M, C]`)."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def split_spec(spec, default_preprocess=""):
  """`(dataset, split)` or `(dataset, split, preprocess)` -> the three of them."""
  spec = tuple(spec)
  if len(spec) not in (2, 3):
    raise ValueError(f"Expected (dataset, split) or (dataset, split, preprocess), got {spec!r}.")
  dataset, split, *ops = spec
  return dataset, split, ops[0] if ops else default_preprocess


class TransformedPredict:
  """A predict function whose outputs pass through `transform(outputs) -> outputs`
  (e.g. fitted post-hoc components), computed once per split and round.

  Args:
    predict: the underlying predict function (a `Predictor`).
    transform: maps an output dict of NumPy arrays to a new one.
  """

  def __init__(self, predict, transform):
    self.predict = predict
    self.transform = transform
    self._cache = {}

  def reset(self):
    self._cache.clear()
    if hasattr(self.predict, "reset"):
      self.predict.reset()

  def __call__(self, dataset, split, preprocess="", cache=True):
    outputs, labels = self.predict(dataset, split, preprocess, cache=cache)
    key = (id(outputs), dataset if isinstance(dataset, str) else id(dataset), split, preprocess)
    if key not in self._cache:
      if len(self._cache) >= 32:  # Bootstrap replicates: each is a new resample.
        self._cache.clear()
      # The outputs stay referenced beside the result, so their id is not reused.
      self._cache[key] = (outputs, (self.transform(outputs), labels))
    return self._cache[key][1]


class Prefixed(Evaluator):
  """An evaluator run on transformed outputs, its metric and figure names prefixed.

  `Prefixed(ClassificationEvaluator(...), "posthoc/", transform)` reports
  `posthoc/test/ece` etc. for the outputs after `transform` (the post-hoc stage's "after").
  """

  def __init__(self, evaluator, prefix, transform):
    self.evaluator, self.prefix, self.transform = evaluator, prefix, transform
    self.name = f"{prefix}{evaluator.name}"
    self._wrapped = {}

  def _predict(self, predict):
    found = self._wrapped.get(id(predict))
    if found is None or found.predict is not predict:
      found = self._wrapped[id(predict)] = TransformedPredict(predict, self.transform)
    return found

  def evaluate(self, predict):
    found = self.evaluator.evaluate(self._predict(predict))
    return {f"{self.prefix}{k}": v for k, v in found.items()}

  def figures(self, predict):
    if not hasattr(self.evaluator, "figures"):
      return {}
    found = self.evaluator.figures(self._predict(predict)) or {}
    return {f"{self.prefix}{k}": v for k, v in found.items()}
