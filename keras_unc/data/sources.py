"""Data sources: where examples come from, before any preprocessing.

A `Source` yields raw examples `{"image": uint8 [H, W, C], "label": int64 []}`
in a fixed, deterministic order (not shuffled, not repeated). Images keep their
stored value range: models resize/normalise raw images themselves, so the
pipeline only converts when a preprocessing op asks for it.

Names understood by `get_source`:
  * "mnist", "fashion_mnist": local offline copies (run `launch/fetch_data.sh`),
    held in memory and random-access (`Source.arrays`).
  * "digits": scikit-learn's 8x8 digits, a tiny real set for smoke tests.
  * "tfds:<builder>": any TFDS dataset already prepared in `data_dir`.
  * "cached:<dir>": backbone embeddings written by `python -m keras_unc cache`
    (`keras_unc.data.cached`); training on it skips the backbone.

Splits accept TFDS-style slices for every source: "train", "train[:50000]",
"train[50000:]", "train[:10%]", "test[-100:]".
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import os
import pickle
import re
from collections.abc import Callable
from typing import ClassVar

import gin
import numpy as np
import tensorflow as tf

from keras_unc.runtime import files

FETCH_HINT = (
  "Run `launch/fetch_data.sh` (it writes to $KERAS_UNC_DATA_DIR, default "
  "~/.cache/keras_unc/data), or set KERAS_UNC_DATA_DIR / get_source.data_dir to the "
  "folder that holds the files."
)
_SLICE_RE = re.compile(r"^(\w+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?$")


def parse_split(split: str, sizes: dict[str, int]) -> tuple[str, int, int]:
  """Parses "name" / "name[a:b]" into (name, start, stop) absolute indices.

  Bounds are ints or percentages (rounded to the closest index, like TFDS'
  default), negative values count from the end, as in Python slicing.
  """
  m = _SLICE_RE.match(split.replace(" ", ""))
  if not m:
    raise ValueError(
      f"Malformed split {split!r}: expected e.g. 'train', "
      "'train[:50000]', 'train[50000:]' or 'train[:10%]'."
    )
  name, lo, hi = m.groups()
  if name not in sizes:
    raise ValueError(f"Unknown split {name!r}; valid splits: {sorted(sizes)}.")
  n = sizes[name]

  def bound(b, default):
    if b is None:
      return default
    v = int(round(float(b[:-1]) * n / 100)) if b.endswith("%") else int(b)
    return v + n if v < 0 else v

  start, stop = slice(bound(lo, 0), bound(hi, n)).indices(n)[:2]
  return name, start, max(start, stop)


def check_labels(labels: np.ndarray, num_classes: int, dataset: str) -> None:
  """Raises ValueError if any label is outside [0, num_classes)."""
  bad = (labels < 0) | (labels >= num_classes)
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(
      f"Label {int(labels[i])} (example {i}) of dataset {dataset!r} is "
      f"outside [0, num_classes={num_classes}). Fix the labels (or the dataset's "
      "num_classes / get_source.label_key) before training."
    )


@dataclasses.dataclass
class Source:
  """Base class. `image_shape` is (H, W, C) as stored (None for variable)."""

  name: str
  num_classes: int
  image_shape: tuple
  # True when `arrays()` gives random access (index-based shuffling/resume).
  random_access: ClassVar[bool] = False

  def num_examples(self, split: str) -> int:
    """Number of examples in `split` (slices allowed)."""
    raise NotImplementedError

  def load(self, split: str) -> tf.data.Dataset:
    """{"image": uint8 [H,W,C], "label": int64 []}, fixed order, one pass."""
    raise NotImplementedError

  def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) NumPy arrays; only when `random_access`."""
    raise NotImplementedError(
      f"Source {self.name!r} is streamed; it has no random access "
      "(check `source.random_access` first)."
    )

  def train_lookup(self, split: str, seed: int) -> Callable:
    """`fn(index, epoch) -> example` for random-access training streams (graph mode);
    a feature cache overrides it to pick one of its augmented epochs.
    """
    images, labels = (tf.constant(a) for a in self.arrays(split))
    return lambda i, _: {"image": tf.gather(images, i), "label": tf.gather(labels, i)}


@dataclasses.dataclass
class ArraySource(Source):
  """A source held in memory as NumPy arrays, loaded lazily on first use."""

  split_sizes: dict = dataclasses.field(default_factory=dict)
  loader: Callable[[], dict] = dataclasses.field(default=None, repr=False)
  random_access: ClassVar[bool] = True

  def num_examples(self, split: str) -> int:
    _, start, stop = parse_split(split, self.split_sizes)
    return stop - start

  def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns read-only (images uint8 [N,H,W,C], labels int64 [N])."""
    name, start, stop = parse_split(split, self.split_sizes)
    images, labels = self._all()[name]
    return images[start:stop], labels[start:stop]

  def load(self, split: str) -> tf.data.Dataset:
    images, labels = self.arrays(split)
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})

  def _all(self) -> dict:
    if not hasattr(self, "_cache"):
      data = self.loader()
      for split, (images, labels) in data.items():
        # Validate once, eagerly: a wrong file must fail loudly here.
        want = (self.split_sizes[split],) + tuple(self.image_shape)
        if images.shape != want or images.dtype != np.uint8:
          raise ValueError(
            f"{self.name}/{split}: images {images.dtype}{images.shape}, expected uint8{want}."
          )
        check_labels(labels, self.num_classes, f"{self.name}/{split}")
        images.flags.writeable = labels.flags.writeable = False
      self._cache = data
    return self._cache


def _require(path: str, name: str) -> str:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{name}: expected file {path} is missing. {FETCH_HINT}")
  return path


@functools.lru_cache(maxsize=2)
def _load_mnist(data_dir: str) -> dict:
  path = _require(os.path.join(data_dir, "mnist", "mnist.pkl.gz"), "mnist")
  with gzip.open(path, "rb") as f:
    train, valid, test = pickle.load(f, encoding="latin1")

  def conv(x, y):  # floats are exactly uint8/256
    return (np.round(x * 256).astype(np.uint8).reshape(-1, 28, 28, 1), y.astype(np.int64))

  # The pickle splits the official 60k train set into 50k train + 10k valid.
  images, labels = zip(conv(*train), conv(*valid))
  return {"train": (np.concatenate(images), np.concatenate(labels)), "test": conv(*test)}


def _read_idx(path: str) -> np.ndarray:
  with gzip.open(path, "rb") as f:
    buf = f.read()
  ndim = buf[3]  # magic: 0, 0, dtype (0x08 = uint8), ndim
  shape = np.frombuffer(buf, ">i4", count=ndim, offset=4)
  return np.frombuffer(buf, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@functools.lru_cache(maxsize=2)
def _load_fashion_mnist(data_dir: str) -> dict:
  d = os.path.join(data_dir, "fashion_mnist")
  out = {}
  for split, prefix in (("train", "train"), ("test", "t10k")):
    x = _read_idx(_require(os.path.join(d, f"{prefix}-images-idx3-ubyte.gz"), "fashion_mnist"))
    y = _read_idx(_require(os.path.join(d, f"{prefix}-labels-idx1-ubyte.gz"), "fashion_mnist"))
    out[split] = (x.reshape(-1, 28, 28, 1), y.astype(np.int64))
  return out


@functools.lru_cache(maxsize=1)
def _load_digits() -> dict:
  from sklearn.datasets import load_digits  # bundled with sklearn: offline

  d = load_digits()
  x = np.round(d.images * 255 / 16).astype(np.uint8)[..., None]
  y = d.target.astype(np.int64)
  return {"train": (x[:1500], y[:1500]), "test": (x[1500:], y[1500:])}


@dataclasses.dataclass
class TfdsSource(Source):
  """Any TFDS builder, read from an already prepared `data_dir` (offline)."""

  builder: object = dataclasses.field(default=None, repr=False)
  image_key: str = "image"
  label_key: str = "label"
  skip_decoding: bool = False  # True: raw encoded bytes; use the `decode` op

  def _splits(self) -> dict[str, int]:
    return {k: v.num_examples for k, v in self.builder.info.splits.items()}

  def _check_split(self, split: str) -> None:
    sizes = self._splits()
    if sizes:  # empty when not prepared (or under tfds.testing.mock_data)
      parse_split(split, sizes)

  def num_examples(self, split: str) -> int:
    self._check_split(split)
    if self._splits():
      return self.builder.info.splits[split].num_examples
    n = int(self.load(split).cardinality())  # e.g. mocked data
    if n < 0:
      raise ValueError(f"Unknown number of examples in {self.name}/{split}.")
    return n

  def load(self, split: str) -> tf.data.Dataset:
    import tensorflow_datasets as tfds

    self._check_split(split)
    decoders = {self.image_key: tfds.decode.SkipDecoding()} if self.skip_decoding else None
    try:
      ds = self.builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
    except AssertionError as e:  # TFDS' "could not find data" error
      b = self.builder
      raise FileNotFoundError(
        f"TFDS dataset {b.name!r} is not prepared in data_dir "
        f"{b.data_dir!r}. This code never downloads: prepare it offline "
        f"on a machine with network, e.g. `tfds build {b.name} "
        f"--data_dir=<dir>`, copy it over and point get_source.data_dir "
        f"(or KERAS_UNC_DATA_DIR) at it."
      ) from e
    ik, lk = self.image_key, self.label_key

    def select(ex):
      label = self.label_check(tf.cast(ex[lk], tf.int64))
      return {"image": ex[ik], "label": label}

    return ds.map(select, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def label_check(self, label: tf.Tensor) -> tf.Tensor:
    """Graph-mode label range check: streamed data can't be checked eagerly."""
    n = self.num_classes
    ok = tf.logical_and(label >= 0, label < n)
    with tf.control_dependencies(
      [
        tf.debugging.Assert(
          ok,
          [
            f"Label out of range in dataset {self.name}: label =",
            label,
            f"is outside [0, num_classes={n}). Check get_source.label_key and "
            "num_classes, or remap/drop the bad labels.",
          ],
        )
      ]
    ):
      return tf.identity(label)


def default_data_dir() -> str:
  """$KERAS_UNC_DATA_DIR, else the per-user cache folder (`$XDG_CACHE_HOME/keras_unc/data`,
  `~/.cache/keras_unc/data` by default): never a folder relative to where the command runs.
  """
  if os.environ.get("KERAS_UNC_DATA_DIR"):
    return os.environ["KERAS_UNC_DATA_DIR"]
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "keras_unc", "data")


# Prefix registry: "<prefix>:<rest>" names open with `opener(rest, data_dir, **keys)`. Other
# modules of this package register theirs (`cached:` in `keras_unc.data.cached`), so this
# module never imports them.
_PREFIXES: dict[str, Callable[..., Source]] = {}


def register_prefix(prefix: str):
  """Decorator: `opener(rest, data_dir, *, image_key, label_key, skip_decoding)` handles
  source names `"<prefix>:<rest>"`.
  """

  def wrap(opener):
    _PREFIXES[prefix] = opener
    return opener

  return wrap


@register_prefix("tfds")
def _open_tfds(
  builder_name: str, data_dir: str | None, *, image_key: str, label_key: str, skip_decoding: bool
) -> Source:
  import tensorflow_datasets as tfds

  builder = tfds.builder(builder_name, data_dir=data_dir)
  feats = builder.info.features
  return TfdsSource(
    name=f"tfds:{builder_name}",
    num_classes=feats[label_key].num_classes,
    image_shape=tuple(feats[image_key].shape),
    builder=builder,
    image_key=image_key,
    label_key=label_key,
    skip_decoding=skip_decoding,
  )


VALID_NAMES = (
  "mnist",
  "fashion_mnist",
  "digits",
  "tfds:<builder>",
  "<name>@<indices.json>",
  "cached:<dir>",
  "toy:<two_moons|two_ovals>",
)


def write_subset(path: str, split: str, indices) -> str:
  """Writes the indices file of a `<name>@<path>` subset source, atomically."""
  return files.write_json(path, {"split": split, "indices": [int(i) for i in indices]})


def subset_source(base: Source, path: str) -> ArraySource:
  """`<name>@<path>`: split `S` of `base` restricted to some examples (e.g. the labelled
  set of active learning). `path` is JSON `{"split": S, "indices": [...]}` with indices
  into the whole split `S`; `S` then holds those examples in that order, every other split
  is `base`'s. In-memory (random-access) bases only.
  """
  if not base.random_access:
    raise ValueError(
      f"Subset source {base.name}@{path}: {base.name!r} is streamed; "
      "subsets need an in-memory source (mnist, fashion_mnist, digits)."
    )
  with open(_require(path, f"{base.name}@{path}")) as f:
    spec = json.load(f)
  split, idx = spec["split"], np.asarray(spec["indices"], np.int64)
  n = base.split_sizes.get(split, 0)
  if not n or idx.ndim != 1 or ((idx < 0) | (idx >= n)).any():
    raise ValueError(
      f"{path}: expected indices in [0, {n}) into a whole split of "
      f"{base.name!r} (one of {sorted(base.split_sizes)}); got split "
      f"{split!r}, indices in [{idx.min(initial=0)}, {idx.max(initial=0)}]."
    )

  def load():
    out = {s: base.arrays(s) for s in base.split_sizes}
    out[split] = tuple(a[idx] for a in out[split])
    return out

  return ArraySource(
    f"{base.name}@{path}",
    base.num_classes,
    base.image_shape,
    dict(base.split_sizes, **{split: len(idx)}),
    load,
  )


@gin.configurable
def get_source(
  name: str,
  data_dir: str | None = None,
  *,
  image_key: str = "image",
  label_key: str = "label",
  skip_decoding: bool = False,
  builder_only: bool = False,
):
  """Returns the named `Source`.

  Args:
    name: "mnist", "fashion_mnist", "digits", "<name>@<indices.json>" (a subset), or
      "<prefix>:<rest>" for a registered prefix ("tfds:<builder>", "cached:<dir>").
    data_dir: folder with the local files (default: `default_data_dir()`). For TFDS it is
      the TFDS data_dir (None: TFDS default).
    image_key, label_key: TFDS feature names mapped to "image"/"label".
    skip_decoding: TFDS only; keep images encoded (decode with the op).
    builder_only: TFDS only; return the `tfds` builder (in the same `data_dir`) rather
      than a `Source`, for sources with other label features (`tfds_labels`).
  """
  if builder_only:
    if not name.startswith("tfds:"):
      raise ValueError(f"builder_only needs a 'tfds:<builder>' name, got {name!r}.")
    import tensorflow_datasets as tfds

    return tfds.builder(name[len("tfds:") :], data_dir=data_dir)
  prefix, sep, rest = name.partition(":")
  if sep and prefix in _PREFIXES:
    return _PREFIXES[prefix](
      rest, data_dir, image_key=image_key, label_key=label_key, skip_decoding=skip_decoding
    )
  if "@" in name:  # "<name>@<indices.json>": a subset (see `subset_source`).
    base, path = name.split("@", 1)
    return subset_source(get_source(base, data_dir), path)
  data_dir = os.path.abspath(data_dir or default_data_dir())
  if name == "mnist":
    _require(os.path.join(data_dir, "mnist", "mnist.pkl.gz"), name)  # fail fast
    return ArraySource(
      "mnist",
      10,
      (28, 28, 1),
      {"train": 60000, "test": 10000},
      functools.partial(_load_mnist, data_dir),
    )
  if name == "fashion_mnist":
    _require(os.path.join(data_dir, "fashion_mnist", "train-images-idx3-ubyte.gz"), name)
    return ArraySource(
      "fashion_mnist",
      10,
      (28, 28, 1),
      {"train": 60000, "test": 10000},
      functools.partial(_load_fashion_mnist, data_dir),
    )
  if name == "digits":
    return ArraySource("digits", 10, (8, 8, 1), {"train": 1500, "test": 297}, _load_digits)
  raise ValueError(f"Unknown data source {name!r}; valid names: {', '.join(VALID_NAMES)}.")
