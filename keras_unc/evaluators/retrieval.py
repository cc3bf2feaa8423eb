"""Zero-shot downstream retrieval of the URL benchmark: R@1, R-AUROC and friends.

Reference: Kirchhof, Mucsanyi, Oh & Kasneci (2023), "URL: A Representation Learning
Benchmark for Transferable Uncertainty Estimates", NeurIPS Datasets and Benchmarks; and
Kirchhof et al. (2024), "Pretrained Visual Uncertainties".
"""

import logging

import gin
import numpy as np
import tensorflow as tf

from keras_unc import metrics
from keras_unc.data import Source, get_source
from keras_unc.data.sources import TfdsSource
from keras_unc.evaluators.base import Evaluator, hard_labels, split_spec
from keras_unc.metrics.soft_labels import _average_ranks

log = logging.getLogger(__name__)

# URL / VTAB downstream sets by short name: (dataset, split, label feature, soft-label feature).
PRESETS = {
  "cub": ("tfds:caltech_birds2011", "test", "label", None),
  "cars": ("tfds:cars196", "test", "label", None),
  "sop": ("tfds:stanford_online_products", "test", "class_id", None),
  "cifar10h": ("tfds:cifar10_h", "test", "label", "soft_label"),
  "caltech101": ("tfds:caltech101", "test", "label", None),
  "cifar100": ("tfds:cifar100", "test", "label", None),
  "dtd": ("tfds:dtd", "test", "label", None),
  "oxford_flowers102": ("tfds:oxford_flowers102", "test", "label", None),
  "oxford_iiit_pet": ("tfds:oxford_iiit_pet", "test", "label", None),
  "resisc45": ("tfds:resisc45", "train", "label", None),  # TFDS has only "train".
  "sun397": ("tfds:sun397", "test", "label", None),
  "svhn": ("tfds:svhn_cropped", "test", "label", None),
}
# Soft-label features read automatically for these datasets (URL `rcorr_entropy`).
SOFT_LABEL_KEYS = {"tfds:cifar10_h": "soft_label"}
CROP_KEY = "crop_fraction"
BACKENDS = ("numpy", "tf")  # Nearest-neighbour search: exact float64 NumPy, or float32 TF.


def spearman(a, b):
  """Spearman rank correlation (average ranks for ties); NaN if either is constant."""
  ra, rb = _average_ranks(np.asarray(a, np.float64)), _average_ranks(np.asarray(b, np.float64))
  ra, rb = ra - ra.mean(), rb - rb.mean()
  denom = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
  return float(np.sum(ra * rb) / denom) if denom > 0 else float("nan")


def _auroc_or_nan(scores, positives, what):
  positives = np.asarray(positives, bool)
  if positives.all() or not positives.any():
    log.warning("%s is undefined (all %d examples in one class): NaN.", what, positives.size)
    return float("nan")
  return metrics.auroc(scores, positives)


def crop_fractions(n, low, high, seed=0):
  """The per-image fractions kept by the crops: `U[low, high)`, fixed by `seed` and `n`
  (like URL's stored random crops, so every evaluation round uses the same crops).
  """
  return np.random.default_rng([seed, n]).uniform(low, high, n).astype(np.float32)


class CropFractionSource(Source):
  """Wraps a source and adds `crop_fraction` to every example, by its position.

  The `zoom_crop` op (without an argument) crops each image to its own fraction; the
  fractions of a split are `crop_fractions(num_examples(split), low, high, seed)`.
  """

  random_access = False  # Evaluation only: examples are read in order through `load`.

  def __init__(self, base, low, high, seed=0):
    super().__init__(
      name=f"{base.name}:cropped", num_classes=base.num_classes, image_shape=base.image_shape
    )
    self.base, self.low, self.high, self.seed = base, low, high, seed

  def num_examples(self, split):
    return self.base.num_examples(split)

  def fractions(self, split):
    return crop_fractions(self.num_examples(split), self.low, self.high, self.seed)

  def load(self, split):
    fractions = tf.constant(self.fractions(split))

    def add(pos, ex):
      return {**ex, CROP_KEY: tf.gather(fractions, pos)}

    return (
      self.base.load(split)
      .enumerate()
      .map(add, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    )


class HardAndSoftLabelSource(TfdsSource):
  """A TFDS source yielding `label: float32 [1 + C]` = (class id, soft label distribution).

  URL's layout for CIFAR-10H: the hard label drives R@1, the distribution `rcorr_entropy`.
  """

  def __init__(self, base, soft_key):
    feats = base.builder.info.features
    if soft_key not in feats:
      raise ValueError(
        f"{base.name} has no soft-label feature {soft_key!r}; features: {sorted(feats)}."
      )
    super().__init__(
      name=f"{base.name}:{soft_key}",
      num_classes=base.num_classes,
      image_shape=base.image_shape,
      builder=base.builder,
      image_key=base.image_key,
      label_key=base.label_key,
      skip_decoding=base.skip_decoding,
    )
    self.soft_key = soft_key

  def load(self, split):
    import tensorflow_datasets as tfds

    self._check_split(split)
    decoders = {self.image_key: tfds.decode.SkipDecoding()} if self.skip_decoding else None
    ds = self.builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
    ik, lk, sk = self.image_key, self.label_key, self.soft_key

    def select(ex):
      soft = tf.cast(tf.reshape(ex[sk], [-1]), tf.float32)
      soft = tf.math.divide_no_nan(soft, tf.reduce_sum(soft))
      hard = tf.cast(self.label_check(tf.cast(ex[lk], tf.int64)), tf.float32)
      return {"image": ex[ik], "label": tf.concat([hard[None], soft], 0)}

    return ds.map(select, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _entry(name, spec, preprocess):
  """`name, (dataset, split, preprocess, label_key, soft_key)` of one downstream entry."""
  if isinstance(spec, str) or isinstance(spec, Source):
    spec = (spec,)
  spec = tuple(spec)
  dataset = spec[0]
  label_key, soft_key = "label", None
  if isinstance(dataset, str) and dataset in PRESETS:
    name = name or dataset
    dataset, split, label_key, soft_key = PRESETS[dataset]
    spec = (dataset, *(spec[1:] or (split,)))
  if len(spec) == 1:
    spec = spec + ("test",)
  dataset, split, ops = split_spec(spec, preprocess)
  if isinstance(dataset, str):
    soft_key = soft_key or SOFT_LABEL_KEYS.get(dataset)
  if name is None:
    name = dataset.split(":", 1)[-1] if isinstance(dataset, str) else dataset.name
  return name, (dataset, split, ops, label_key, soft_key)


def _block_similarities(queries, candidates):
  """One `[B, C]` block of inner products (the only place similarities are formed)."""
  return tf.matmul(queries, candidates, transpose_b=True)


def recall_at_one_tf(embeddings, labels, chunk_size=4096):
  """`metrics.recall_at_one` with TensorFlow in float32 blocks, for an accelerator.

  Same definition (L2-normalised, cosine nearest neighbour other than the query, ties
  to the lowest index), but float32 (TF32 where TensorFlow enables it), so near-ties may
  resolve differently from the float64 NumPy version. Memory: the `[N, D]` embeddings
  plus one `chunk_size x chunk_size` block; never `N x N`.

  Returns:
    `(r_at_1, correct)` like `metrics.recall_at_one`.
  """
  labels = np.asarray(labels)
  x = np.asarray(embeddings, np.float32)
  if x.ndim != 2 or labels.ndim != 1 or len(x) != len(labels) or len(x) < 2:
    raise ValueError(
      f"recall_at_one_tf needs embeddings [N, D] and labels [N] with N >= 2, "
      f"got {x.shape} and {labels.shape}."
    )
  if not np.isfinite(x).all():
    raise ValueError("recall_at_one_tf: the embeddings contain non-finite values.")
  x = tf.math.l2_normalize(tf.constant(x), axis=1, epsilon=1e-24)
  n = len(labels)
  nn = np.empty(n, np.int64)
  for qs in range(0, n, chunk_size):
    q = x[qs : qs + chunk_size]
    rows = tf.range(tf.shape(q)[0])
    best = tf.fill([tf.shape(q)[0]], -np.inf)
    best_idx = tf.zeros_like(rows, tf.int64)
    for cs in range(0, n, chunk_size):
      sim = _block_similarities(q, x[cs : cs + chunk_size])
      self_cols = qs + rows - cs  # The query itself: global row == global column.
      is_self = tf.equal(tf.range(tf.shape(sim)[1])[None, :], self_cols[:, None])
      sim = tf.where(is_self, tf.constant(-np.inf, sim.dtype), sim)
      j = tf.argmax(sim, axis=1)
      v = tf.reduce_max(sim, axis=1)
      better = v > best  # Strict: an earlier block wins ties.
      best = tf.where(better, v, best)
      best_idx = tf.where(better, j + cs, best_idx)
    nn[qs : qs + chunk_size] = best_idx.numpy()
  correct = labels[nn] == labels
  return float(correct.mean()), correct


def _recall(embedding, labels, chunk_size, backend):
  if backend == "tf":
    return recall_at_one_tf(embedding, labels, chunk_size)
  return metrics.recall_at_one(embedding, labels, chunk_size)


def retrieval_metrics(
  embedding,
  labels,
  uncertainty,
  soft_labels=None,
  quantiles=(0.05, 0.25, 0.5, 0.75, 0.95),
  chunk_size=2048,
  backend="numpy",
):
  """URL metrics of one dataset: `r1`, `auroc_correct`, `rcorr_entropy` (with soft labels)
  and uncertainty statistics (`min_unc`, `avg_unc`, `max_unc`, `q<pct>_unc`).
  """
  unc = np.asarray(uncertainty, np.float64)
  r1, correct = _recall(embedding, labels, chunk_size, backend)
  found = {"r1": r1, "auroc_correct": _auroc_or_nan(-unc, correct, "R-AUROC")}
  if soft_labels is not None:
    soft = np.asarray(soft_labels, np.float64)
    valid = soft.sum(axis=1) > 0
    try:
      found["rcorr_entropy"] = metrics.spearman_uncertainty_vs_label_entropy(
        unc[valid], soft[valid]
      )
    except ValueError as e:  # Constant uncertainty or entropy.
      log.warning("rcorr_entropy is undefined: %s", e)
      found["rcorr_entropy"] = float("nan")
  found.update(min_unc=float(unc.min()), avg_unc=float(unc.mean()), max_unc=float(unc.max()))
  for q, v in zip(quantiles, np.quantile(unc, quantiles)):
    found[f"q{round(100 * q):02d}_unc"] = float(v)
  return found


def mixed_metrics(
  embedding,
  labels,
  uncertainty,
  up_embedding,
  up_labels,
  up_uncertainty,
  max_examples=None,
  seed=0,
  chunk_size=2048,
  backend="numpy",
):
  """`auroc_correct_mixed` and `auroc_ood` on a 50/50 mix of downstream and upstream data.

  Both sides are subsampled to the same size `k = min(n_up, n_down, max_examples)` (fixed
  random subsets); upstream class ids are shifted past the downstream ones so the two sets
  never count as each other's class. `auroc_ood`: uncertainty scoring "is downstream".
  """
  labels, up_labels = np.asarray(labels), np.asarray(up_labels)
  n_up, n_down = len(up_labels), len(labels)
  k = min(n_up, n_down, max_examples or n_up)
  up = np.random.default_rng([seed, n_up]).permutation(n_up)[:k]
  down = np.random.default_rng([seed, n_down, k]).permutation(n_down)[:k]
  emb = np.concatenate([np.asarray(up_embedding)[up], np.asarray(embedding)[down]])
  mixed = np.concatenate(
    [up_labels[up].astype(np.int64) + int(labels.max()) + 1, labels[down].astype(np.int64)]
  )
  unc = np.concatenate(
    [np.asarray(up_uncertainty, np.float64)[up], np.asarray(uncertainty, np.float64)[down]]
  )
  _, correct = _recall(emb, mixed, chunk_size, backend)
  is_down = np.arange(2 * k) >= k
  return {
    "auroc_correct_mixed": _auroc_or_nan(-unc, correct, "Mixed R-AUROC"),
    "auroc_ood": metrics.auroc(unc, is_down),
  }


def crop_metrics(uncertainty, cropped_uncertainty, fractions):
  """`croppedHasBiggerUnc`: share of images whose crop is more uncertain (strictly);
  `rcorr_crop_unc`: Spearman(amount cropped = 1 − fraction kept, crop uncertainty).
  """
  unc = np.asarray(uncertainty, np.float64)
  unc_c = np.asarray(cropped_uncertainty, np.float64)
  return {
    "croppedHasBiggerUnc": float(np.mean(unc_c > unc)),
    "rcorr_crop_unc": spearman(1.0 - np.asarray(fractions, np.float64), unc_c),
  }


@gin.configurable
class RetrievalEvaluator(Evaluator):
  """Zero-shot retrieval and uncertainty on downstream sets (URL benchmark).

  Per downstream set `<name>`, reports `<prefix>/<name>_<metric>`, and the mean over
  the sets `<prefix>/avg_downstream_<metric>` (over the sets that report the metric):

  * `r1`: Recall@1, nearest neighbour by cosine similarity (query excluded; chunked,
    never an N×N matrix);
  * `auroc_correct` (R-AUROC): AUROC of −uncertainty for "the R@1 neighbour has the
    query's class";
  * `auroc_correct_mixed`, `auroc_ood` (with `upstream`): R-AUROC on a 50/50 mix with
    the upstream data (upstream class ids shifted past the downstream ones), and the
    AUROC of the uncertainty for "is downstream";
  * `rcorr_entropy` (soft-label sets, e.g. CIFAR-10H): Spearman(uncertainty, entropy of
    the human label distribution);
  * `croppedHasBiggerUnc`, `rcorr_crop_unc` (with `crop=True`): every image is
    center-cropped to a fixed random fraction `U[crop_min, crop_max)` of its height and
    width and resized back (op `zoom_crop`, after the preprocessing); the share of images
    whose crop gets a strictly larger uncertainty, and Spearman(1 − fraction, crop
    uncertainty);
  * `min_unc`, `avg_unc`, `max_unc`, `q<pct>_unc`: uncertainty statistics.

  R-AUROC is NaN (with a warning) when every or no neighbour is correct.

  Args:
    datasets: a list of downstream sets, each a preset name (`PRESETS`: `cub`, `cars`,
      `sop`, `cifar10h`, VTAB names), a source name (`tfds:cars196`, `fashion_mnist`;
      split "test"), or a `(dataset, split[, preprocess])` tuple; or a dict
      `{name: any of those}` naming them.
    upstream: `(dataset, split[, preprocess])` of the upstream (training distribution)
      evaluation data for the mixed and OOD metrics; None skips them.
    preprocess: default preprocessing-op string (e.g. "decode|resize(224)").
    prefix: metric-name prefix.
    crop: run the crop metrics (a second pass over each downstream set).
    crop_min, crop_max: range of the kept fraction of height and width.
    quantiles: uncertainty quantiles reported as `q<100 q>_unc`.
    max_mixed_examples: cap on each half of the mixed set (URL: 50 000).
    seed: seeds the mixed-set subsets and the crop fractions (fixed across rounds).
    chunk_size: block size of the nearest-neighbour search (memory O(chunk_size²)).
    backend: nearest-neighbour search in "numpy" (exact float64, `metrics.recall_at_one`)
      or "tf" (float32 blocks on the accelerator, `recall_at_one_tf`: use it for 10⁵–10⁶
      embeddings, where the O(N² D) NumPy search takes hours on a CPU).
  """

  name = "retrieval"

  def __init__(
    self,
    datasets,
    upstream=None,
    preprocess="",
    prefix="retrieval",
    crop=True,
    crop_min=0.1,
    crop_max=0.75,
    quantiles=(0.05, 0.25, 0.5, 0.75, 0.95),
    max_mixed_examples=50000,
    seed=0,
    chunk_size=2048,
    backend="numpy",
  ):
    if isinstance(datasets, str):
      datasets = [datasets]
    items = (
      dict(datasets).items() if isinstance(datasets, dict) else [(None, spec) for spec in datasets]
    )
    self.datasets = dict(_entry(name, spec, preprocess) for name, spec in items)
    if not self.datasets:
      raise ValueError(
        "RetrievalEvaluator needs at least one downstream dataset, e.g. "
        "datasets=['cub', 'cars', 'sop'] or {'fmnist': ('fashion_mnist', "
        "'test')}."
      )
    if len(self.datasets) != len(items):
      raise ValueError(
        f"RetrievalEvaluator: downstream names must be unique, got "
        f"{[n for n, _ in items]}; pass a dict {{name: spec}}."
      )
    self.upstream = split_spec(upstream, preprocess) if upstream is not None else None
    if not 0 < crop_min <= crop_max <= 1:
      raise ValueError(
        f"Need 0 < crop_min <= crop_max <= 1, got crop_min={crop_min}, crop_max={crop_max}."
      )
    bad_q = [q for q in quantiles if not 0 <= q <= 1]
    if bad_q:
      raise ValueError(f"quantiles must lie in [0, 1], got {bad_q}.")
    self.prefix, self.crop = prefix, crop
    self.crop_min, self.crop_max = crop_min, crop_max
    self.quantiles, self.max_mixed_examples = tuple(quantiles), max_mixed_examples
    if backend not in BACKENDS:
      raise ValueError(f"Unknown nearest-neighbour backend {backend!r}: choose one of {BACKENDS}.")
    self.seed, self.chunk_size, self.backend = seed, chunk_size, backend
    self._sources = {}

  def _source(self, name, cropped=False):
    """The (cached: the predictor keys sources by identity) source of one set."""
    key = (name, cropped)
    if key not in self._sources:
      dataset, _, _, label_key, soft_key = self.datasets[name]
      source = dataset
      if isinstance(dataset, str):
        if dataset.startswith("tfds:"):
          source = get_source(dataset, label_key=label_key)
          if soft_key:
            source = HardAndSoftLabelSource(source, soft_key)
        elif cropped:
          source = get_source(dataset)
        # Other names go to the predictor as strings (shared with other evaluators).
      if cropped:
        source = CropFractionSource(source, self.crop_min, self.crop_max, self.seed)
      self._sources[key] = source
    return self._sources[key]

  def _labels(self, name, labels):
    labels = np.asarray(labels)
    if self.datasets[name][4] and labels.ndim == 2:  # (class id, soft distribution)
      return labels[:, 0].astype(np.int64), labels[:, 1:]
    if labels.ndim == 2:  # Soft labels of a custom source: argmax as the class.
      return hard_labels(labels), labels
    return labels, None

  def evaluate(self, predict):
    up = None
    if self.upstream is not None:
      out, labels = predict(*self.upstream)
      up = (_require(out, "upstream"), hard_labels(labels), out["uncertainty"])
    per_set = {}
    for name, (_, split, ops, _, _) in self.datasets.items():
      out, labels = predict(self._source(name), split, ops)
      emb = _require(out, name)
      labels, soft = self._labels(name, labels)
      found = retrieval_metrics(
        emb, labels, out["uncertainty"], soft, self.quantiles, self.chunk_size, self.backend
      )
      if up is not None:
        found.update(
          mixed_metrics(
            emb,
            labels,
            out["uncertainty"],
            *up,
            self.max_mixed_examples,
            self.seed,
            self.chunk_size,
            self.backend,
          )
        )
      if self.crop:
        source = self._source(name, cropped=True)
        cropped, _ = predict(source, split, f"{ops}|zoom_crop" if ops else "zoom_crop")
        found.update(
          crop_metrics(out["uncertainty"], cropped["uncertainty"], source.fractions(split))
        )
      per_set[name] = found
    results = {}
    for name, found in per_set.items():
      results.update({f"{self.prefix}/{name}_{k}": v for k, v in found.items()})
    keys = dict.fromkeys(k for found in per_set.values() for k in found)
    for k in keys:
      values = [found[k] for found in per_set.values() if k in found]
      results[f"{self.prefix}/avg_downstream_{k}"] = float(np.mean(values))
    return results


def _require(outputs, where):
  missing = [k for k in ("embedding", "uncertainty") if k not in outputs]
  if missing:
    raise ValueError(
      f"RetrievalEvaluator ({where}): the network outputs lack {missing}; "
      f"it has {sorted(outputs)}. Every keras_unc method outputs both."
    )
  return outputs["embedding"]


__all__ = [
  "BACKENDS",
  "PRESETS",
  "CropFractionSource",
  "HardAndSoftLabelSource",
  "RetrievalEvaluator",
  "crop_fractions",
  "crop_metrics",
  "mixed_metrics",
  "recall_at_one_tf",
  "retrieval_metrics",
  "spearman",
]
