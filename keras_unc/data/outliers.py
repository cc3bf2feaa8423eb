"""Auxiliary outliers for outlier exposure: a synthetic source and the batch mixing.

Outlier exposure (Hendrycks et al., ICLR 2019) trains on an auxiliary out-of-distribution
set next to the in-distribution data: every training batch of `B` in-distribution examples
is followed by `round(ratio * B)` outliers (the reference `CIFAR/oe_scratch.py` draws 256
outliers per 128 in-distribution images: `ratio = 2`), whose label is the marker
`OUTLIER_LABEL` = -1 that the `outlier_exposure` loss understands (and training accuracy
ignores). The outlier stream is an ordinary seeded training stream of the pipeline
(`make_dataset(..., start_step=...)`), so a resumed run sees exactly the outlier batches
the uninterrupted run would have seen.

Auxiliary sources (`outlier_exposure_data.source`):
  * any source name of `get_source` with images of the training images' shape, e.g. a
    `tfds:<builder>` set of natural images (the paper used 80 Million Tiny Images, a set
    far broader than any test OOD set; never use the benchmark's OOD test set, here MNIST
    digits, nor any digits, which would leak it);
  * `outliers:<source>` (offline, in memory): synthetic outliers built from the *training*
    images of `<source>`, a third each of (a) smoothed uniform noise, (b) pixel-permuted
    images and (c) patch-shuffled images (a 4x4 grid of patches in random order), the
    synthetic outliers of the OE literature (Hendrycks et al. ablate Gaussian / uniform /
    permuted-pixel noise; Hein et al. 2019 use permuted and smoothed noise). They are a much
    weaker auxiliary set than natural images: they teach low confidence off the image
    manifold, not on other natural classes.
"""

from __future__ import annotations

import gin
import numpy as np
import tensorflow as tf

from keras_unc.data.pipeline import make_dataset
from keras_unc.data.sources import ArraySource, get_source, register_prefix

OUTLIER_LABEL = -1  # The label of an auxiliary outlier (methods/losses.py has the same).
# Added to train.seed for the outlier stream, so that it is not the in-distribution order.
SEED_OFFSET = 7919
SYNTHETIC_SEED = 0
GRID = 4


def synthetic_outliers(images: np.ndarray, seed: int = SYNTHETIC_SEED) -> np.ndarray:
  """Synthetic outliers `[N, H, W, C]` uint8 from images `[N, H, W, C]` uint8: example i is
  smoothed uniform noise (i % 3 == 0), a pixel permutation of image i (i % 3 == 1), or
  image i with its 4x4 grid of patches shuffled (i % 3 == 2; pixel-permuted when H or W
  is not a multiple of 4). Deterministic given `seed`.
  """
  from scipy import ndimage

  rng = np.random.default_rng(seed)
  n, h, w, c = images.shape
  out = np.empty_like(images)
  kind = np.arange(n) % 3
  # (a) Uniform noise blurred with a Gaussian of sigma 1-2.5 px, stretched to [0, 255].
  idx = np.flatnonzero(kind == 0)
  noise = rng.uniform(0.0, 1.0, (len(idx), h, w, c))
  sigma = rng.uniform(1.0, 2.5, len(idx))
  for j, i in enumerate(idx):
    smooth = ndimage.gaussian_filter(noise[j], (sigma[j], sigma[j], 0))
    lo, hi = smooth.min(), smooth.max()
    out[i] = np.round(255.0 * (smooth - lo) / max(hi - lo, 1e-6)).astype(np.uint8)
  # (b) Pixel permutation (each image its own permutation, channels kept together).
  idx = np.flatnonzero((kind == 1) | ((kind == 2) & bool(h % GRID or w % GRID)))
  flat = images[idx].reshape(len(idx), h * w, c)
  out[idx] = rng.permuted(flat, axis=1).reshape(len(idx), h, w, c)
  # (c) Patch shuffle on a GRID x GRID grid.
  if not (h % GRID or w % GRID):
    idx = np.flatnonzero(kind == 2)
    ph, pw = h // GRID, w // GRID
    patches = images[idx].reshape(len(idx), GRID, ph, GRID, pw, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(len(idx), GRID * GRID, ph, pw, c)
    patches = rng.permuted(patches, axis=1).reshape(len(idx), GRID, GRID, ph, pw, c)
    out[idx] = patches.transpose(0, 1, 3, 2, 4, 5).reshape(len(idx), h, w, c)
  return out


@register_prefix("outliers")
def _open_outliers(base_name, data_dir=None, **unused_keys):
  """`outliers:<source>`: `synthetic_outliers` of the training images of an in-memory
  source; one split, "train", the size of the base's; labels are all 0 (the mixing marks
  them `OUTLIER_LABEL`).
  """
  del unused_keys
  base = get_source(base_name, data_dir)
  if not base.random_access or "train" not in getattr(base, "split_sizes", {}):
    raise ValueError(
      f"outliers:{base_name}: synthetic outliers are built from the 'train' split of an "
      "in-memory source (mnist, fashion_mnist, digits); for another source use its own "
      "auxiliary set, e.g. a 'tfds:<builder>' of natural images."
    )
  n = base.split_sizes["train"]

  def load():
    images, _ = base.arrays("train")
    return {"train": (synthetic_outliers(np.asarray(images)), np.zeros(n, np.int64))}

  return ArraySource(
    f"outliers:{base_name}", base.num_classes, base.image_shape, {"train": n}, load
  )


@gin.configurable
def outlier_exposure_data(
  source: str | None = None,
  split: str = "train",
  ratio: float = 2.0,
  preprocess: str = "",
) -> dict:
  """The auxiliary outliers of `loss='outlier_exposure'` (gin-configurable).

  Args:
    source: outlier source name: `outliers:<in-distribution source>` (synthetic, offline)
      or a real auxiliary set (`tfds:<builder>` ...) with images of the training shape.
    split: its split.
    ratio: outliers per in-distribution example in every batch (2: the reference's 256
      outliers per 128 images); the per-replica outlier batch is `round(ratio * B)`.
    preprocess: op string applied to the outliers.
  """
  if not source:
    raise ValueError(
      "loss='outlier_exposure' needs an auxiliary outlier source: set "
      "outlier_exposure_data.source, e.g. 'outliers:fashion_mnist' (synthetic, offline) or "
      "a 'tfds:<builder>' of natural images (not the OOD test set)."
    )
  if not ratio > 0:
    raise ValueError(f"outlier_exposure_data.ratio must be > 0, got {ratio}.")
  return dict(source=source, split=split, ratio=ratio, preprocess=preprocess)


def mix_outliers(
  ds: tf.data.Dataset,
  batch_size: int,
  *,
  seed: int,
  start_step: int = 0,
  input_context: tf.distribute.InputContext | None = None,
  data_dir: str | None = None,
) -> tf.data.Dataset:
  """Appends `round(ratio * b)` outliers labelled `OUTLIER_LABEL` to every `(image, label)`
  batch of `ds` (b = its per-replica batch of the global `batch_size`), as configured by
  `outlier_exposure_data`. The outlier stream is seeded by `seed + SEED_OFFSET` and resumed
  at `start_step`, like the training stream.
  """
  spec = outlier_exposure_data()
  replicas = input_context.num_replicas_in_sync if input_context else 1
  per_replica = batch_size // replicas
  n_out = max(1, round(spec["ratio"] * per_replica))
  source = get_source(spec["source"], data_dir)
  out = make_dataset(
    source,
    spec["split"],
    spec["preprocess"],
    n_out * replicas,
    train=True,
    seed=seed + SEED_OFFSET,
    start_step=start_step,
    input_context=input_context,
  )
  in_shape, out_shape = ds.element_spec[0].shape[1:], out.element_spec[0].shape[1:]
  if in_shape.is_fully_defined() and out_shape.is_fully_defined() and in_shape != out_shape:
    raise ValueError(
      f"Outlier images of {spec['source']}/{spec['split']} have shape {out_shape}, the "
      f"training images {in_shape}: resize them with outlier_exposure_data.preprocess."
    )
  if len(ds.element_spec[1].shape) != 1:
    raise ValueError(
      "Outlier exposure needs integer labels [B] (outliers are marked by label -1); the "
      "training labels are soft: turn off soft-label augmentation (mixup)."
    )

  def concat(inside, outside):
    (x, y), (xo, _) = inside, outside
    yo = tf.fill([tf.shape(xo)[0]], tf.constant(OUTLIER_LABEL, y.dtype))
    return tf.concat([x, tf.cast(xo, x.dtype)], 0), tf.concat([y, yo], 0)

  mixed = tf.data.Dataset.zip((ds, out)).map(concat, num_parallel_calls=tf.data.AUTOTUNE)
  return mixed.prefetch(tf.data.AUTOTUNE)
