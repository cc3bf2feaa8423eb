"""`toy:<name>`: 2-D toy classification data held in memory (the SNGP paper's two moons).

The examples are 2-D points stored as float32 "images" `[1, 1, 2]` so the generic pipeline
and `build_network` take them unchanged (rank-4 batches `[B, 1, 1, 2]`); the `mlp` backbone
flattens them. Train with `build_network.image_size = 1`, `num_channels = 2` and
`value_range = (0.0, 255.0)` (with the adapter's raw range (0, 255) that is the identity, so
the network sees the coordinates themselves); see `gin_configs/benchmarks/toy_2d.gin`.

Names:
  * `toy:two_moons`: two interleaving half circles with Gaussian noise, shifted apart as in
    the TensorFlow SNGP tutorial (class 0 by (-0.1, 0.2), class 1 by (0.1, -0.2)).
  * `toy:two_ovals`: two elongated Gaussian clusters side by side (the SNGP paper's
    Figure 1 "two ovals").

Every split is drawn with NumPy from `toy_data.seed` (train and test from independent
streams), so a name always means the same points. `annulus` draws points far from the data
(the distance-awareness test of `benchmarks/toy_2d.py`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import gin
import numpy as np
import tensorflow as tf

from keras_unc.data.sources import Source, parse_split, register_prefix

TOY_NAMES = ("two_moons", "two_ovals")
_SPLITS = ("train", "test")


def two_moons(num_examples: int, noise: float = 0.1, seed: int = 0):
  """Two interleaving half circles, classes alternating, as `(points [N, 2], labels [N])`.

  Class 0: `(cos t, sin t) + (-0.1, 0.2)`; class 1: `(1 - cos t, 0.5 - sin t) + (0.1, -0.2)`,
  `t ~ U[0, pi]`, plus `N(0, noise^2)` per coordinate (scikit-learn's `make_moons` with
  random angles, and the SNGP tutorial's shift). Example i has label `i % 2`.
  """
  _check_size(num_examples, noise)
  rng = np.random.default_rng(seed)
  labels = np.arange(num_examples) % 2
  t = rng.uniform(0.0, np.pi, num_examples)
  outer = np.stack([np.cos(t), np.sin(t)], 1) + [-0.1, 0.2]
  inner = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], 1) + [0.1, -0.2]
  points = np.where(labels[:, None] == 0, outer, inner)
  points = points + rng.normal(0.0, noise, points.shape)
  return points.astype(np.float32), labels.astype(np.int64)


def two_ovals(num_examples: int, noise: float = 0.1, seed: int = 0):
  """Two elongated Gaussian clusters centred at (-1, 0) and (1, 0), standard deviations
  (0.3 + noise, 1 + noise), as `(points [N, 2], labels [N])`; example i has label `i % 2`.
  """
  _check_size(num_examples, noise)
  rng = np.random.default_rng(seed)
  labels = np.arange(num_examples) % 2
  scale = np.array([0.3 + noise, 1.0 + noise])
  points = rng.normal(0.0, 1.0, (num_examples, 2)) * scale + np.where(
    labels[:, None] == 0, [-1.0, 0.0], [1.0, 0.0]
  )
  return points.astype(np.float32), labels.astype(np.int64)


_GENERATORS = {"two_moons": two_moons, "two_ovals": two_ovals}


def annulus(num_examples: int, inner: float, outer: float, center=(0.0, 0.0), seed: int = 0):
  """Points uniform on the annulus `inner <= |x - center| <= outer` (by area), `[N, 2]`.

  The radius is drawn as `sqrt(U[inner^2, outer^2])`, the angle as `U[0, 2 pi)`.
  """
  if not 0 <= inner < outer:
    raise ValueError(
      f"annulus needs 0 <= inner < outer, got inner={inner}, outer={outer}: e.g. 3 and 6."
    )
  if not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
    raise ValueError(f"annulus needs num_examples >= 1, got {num_examples!r}.")
  rng = np.random.default_rng(seed)
  radius = np.sqrt(rng.uniform(inner**2, outer**2, num_examples))
  angle = rng.uniform(0.0, 2 * np.pi, num_examples)
  points = np.stack([np.cos(angle), np.sin(angle)], 1) * radius[:, None]
  return (points + np.asarray(center, np.float64)).astype(np.float32)


def _check_size(num_examples, noise):
  if not isinstance(num_examples, (int, np.integer)) or num_examples < 2:
    raise ValueError(f"Toy data needs num_examples >= 2 (both classes), got {num_examples!r}.")
  if not noise >= 0:
    raise ValueError(f"Toy data noise must be >= 0, got {noise!r}: e.g. 0.1.")


@gin.configurable
def toy_data(name: str, num_train: int = 1000, num_test: int = 1000, noise: float = 0.1, seed=0):
  """The splits of toy data set `name` as `{split: (points [N, 2], labels [N])}`.

  Args:
    name: one of `TOY_NAMES`.
    num_train, num_test: examples per split.
    noise: standard deviation of the Gaussian noise per coordinate.
    seed: NumPy seed; the test split uses an independent stream of the same seed.
  """
  if name not in _GENERATORS:
    raise ValueError(f"Unknown toy data set {name!r}: use one of toy:{', toy:'.join(TOY_NAMES)}.")
  make = _GENERATORS[name]
  return {
    "train": make(num_train, noise, seed=np.random.SeedSequence([seed, 0])),
    "test": make(num_test, noise, seed=np.random.SeedSequence([seed, 1])),
  }


@dataclasses.dataclass
class ToySource(Source):
  """A toy data set in memory: `image` float32 `[1, 1, 2]` (a 2-D point), `label` int64."""

  split_sizes: dict = dataclasses.field(default_factory=dict)
  data: dict = dataclasses.field(default_factory=dict, repr=False)
  random_access: ClassVar[bool] = True

  def num_examples(self, split: str) -> int:
    _, start, stop = parse_split(split, self.split_sizes)
    return stop - start

  def arrays(self, split: str):
    """(points float32 [N, 1, 1, 2], labels int64 [N])."""
    name, start, stop = parse_split(split, self.split_sizes)
    points, labels = self.data[name]
    return points[start:stop, None, None, :], labels[start:stop]

  def load(self, split: str):
    points, labels = self.arrays(split)
    return tf.data.Dataset.from_tensor_slices({"image": points, "label": labels})


@register_prefix("toy")
def _open_toy(name, data_dir=None, **unused_keys):
  """`toy:<name>`: a 2-D toy data set generated in memory (`toy_data` sets its sizes)."""
  del data_dir, unused_keys
  data = toy_data(name)
  for points, labels in data.values():
    points.flags.writeable = labels.flags.writeable = False
  return ToySource(
    name=f"toy:{name}",
    num_classes=2,
    image_shape=(1, 1, 2),
    split_sizes={s: len(data[s][1]) for s in _SPLITS},
    data=data,
  )
