"""`cached:<dir>`: a feature cache as a data source (see `keras_unc.training.feature_cache`).

A cache holds, for E augmented epochs of one split, the frozen backbone's embedding,
the pretrained classifier's logits and the label of every example, in shards
`e<epoch>-s<shard>.npz` next to a `manifest.json`. As a source it yields
`{"embedding": float32 [D], "logits": float32 [C], "label": int64 []}` (plus "image",
the embedding again, so the generic pipeline and Keras see `(embedding, label)`).
Training epoch `t` reads cached epoch `choose_epoch(seed, t, E)`: a fresh random order
of the E epochs every E training epochs, deterministic given the seed.

Everything is loaded into memory (E x N x D float32), like the in-memory sources.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import ClassVar

import numpy as np
import tensorflow as tf

from keras_unc.data.sources import Source, check_labels, parse_split, register_prefix

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_EPOCH_SALT = 0x5EED_CAC4E  # Keeps the epoch choice independent of the pipeline's shuffles.


def shard_name(epoch: int, shard: int) -> str:
  return f"e{epoch:03d}-s{shard:05d}.npz"


def num_shards(num_examples: int, shard_size: int) -> int:
  return -(-num_examples // shard_size)


def read_manifest(path: str) -> dict | None:
  """The manifest of the cache in folder `path`, or None if there is none."""
  file = os.path.join(path, MANIFEST)
  if not os.path.exists(file):
    return None
  with open(file) as f:
    return json.load(f)


def missing_shards(path: str, manifest: dict) -> list[str]:
  """Names of the shards the manifest promises that are not (yet) on disk."""
  key = manifest["key"]
  n = num_shards(key["num_examples"], key["shard_size"])
  return [
    shard_name(e, s)
    for e in range(key["epochs"])
    for s in range(n)
    if not os.path.exists(os.path.join(path, shard_name(e, s)))
  ]


def choose_epoch(seed, epoch, num_epochs):
  """Cached epoch read in training epoch `epoch` (graph-mode int64): every block of
  `num_epochs` training epochs visits each cached epoch once, in an order drawn from
  (seed, block).
  """
  epoch = tf.cast(epoch, tf.int64)
  block_seed = tf.random.experimental.stateless_fold_in(
    tf.constant([seed, _EPOCH_SALT], tf.int64), epoch // num_epochs
  )
  order = tf.random.experimental.stateless_shuffle(
    tf.range(num_epochs, dtype=tf.int64), seed=block_seed
  )
  return order[epoch % num_epochs]


@dataclasses.dataclass
class CachedSource(Source):
  """Embeddings, logits and labels of a feature cache (build it with `python -m keras_unc cache`).

  `image_shape` is `(D,)`, the embedding: a network trained on this source is the head
  alone. The cached split keeps its name (a cache of "train[50000:]" has a split
  "train" of its 10000 examples; slices of it work as usual, relative to the cache), and
  the split string the cache was built from ("train[50000:]") reads the whole cache, so
  one gin config serves both the cache and the training from it. `manifest` is the
  cache's manifest (backbone, checkpoint, preprocessing, epochs).
  """

  path: str = ""
  manifest: dict = dataclasses.field(default_factory=dict, repr=False)
  split_sizes: dict = dataclasses.field(default_factory=dict)
  random_access: ClassVar[bool] = True
  holds_embeddings: ClassVar[bool] = True  # Examples are [D] embeddings, not images.

  @classmethod
  def open(cls, path: str) -> CachedSource:
    path = os.path.abspath(path)
    manifest = read_manifest(path)
    build = f"build it with `python -m keras_unc cache --gin_file=<your config> --workdir={path}`"
    if manifest is None:
      raise FileNotFoundError(f"No feature cache at {path} (no {MANIFEST}): {build}.")
    if manifest.get("format_version") != FORMAT_VERSION:
      raise ValueError(
        f"Feature cache {path} has format version "
        f"{manifest.get('format_version')}, this code reads "
        f"{FORMAT_VERSION}: rebuild it (`--overwrite`)."
      )
    missing = missing_shards(path, manifest)
    if missing:
      raise ValueError(
        f"Feature cache {path} is incomplete: {len(missing)} shards missing (e.g. "
        f"{missing[0]}); the writer was interrupted. Rerun the same "
        f"`python -m keras_unc cache` command to finish it (finished shards are kept)."
      )
    key = manifest["key"]
    split = re.match(r"\w+", key["split"]).group(0)
    return cls(
      name=f"cached:{path}",
      num_classes=int(manifest["num_classes"]),
      image_shape=(int(manifest["embedding_dim"]),),
      path=path,
      manifest=manifest,
      split_sizes={split: int(key["num_examples"])},
    )

  @property
  def num_epochs(self) -> int:
    return int(self.manifest["key"]["epochs"])

  def _bounds(self, split: str) -> tuple[int, int]:
    built_from = self.manifest["key"]["split"]
    if split.replace(" ", "") == built_from.replace(" ", ""):  # The whole cache.
      return 0, int(self.manifest["key"]["num_examples"])
    _, start, stop = parse_split(split, self.split_sizes)
    return start, stop

  def num_examples(self, split: str) -> int:
    start, stop = self._bounds(split)
    return stop - start

  def epochs(self) -> dict:
    """All cached arrays: embedding [E, N, D], logits [E, N, C], label [N]."""
    if not hasattr(self, "_arrays"):
      key = self.manifest["key"]
      n_shards = num_shards(key["num_examples"], key["shard_size"])
      emb, logits, labels = [], [], None
      for e in range(self.num_epochs):
        parts = []
        for s in range(n_shards):
          with np.load(os.path.join(self.path, shard_name(e, s))) as z:
            parts.append({k: z[k] for k in z.files})
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if not np.array_equal(cat["index"], np.arange(key["num_examples"])):
          raise ValueError(
            f"Feature cache {self.path}: epoch {e} does not hold "
            "examples 0..N-1 in order; rebuild it (`--overwrite`)."
          )
        if labels is None:
          labels = cat["label"]
        elif not np.array_equal(labels, cat["label"]):
          raise ValueError(
            f"Feature cache {self.path}: labels of epoch {e} differ "
            "from epoch 0; rebuild it (`--overwrite`)."
          )
        emb.append(cat["embedding"])
        logits.append(cat["logits"])
      check_labels(labels, self.num_classes, self.name)
      self._arrays = {"embedding": np.stack(emb), "logits": np.stack(logits), "label": labels}
    return self._arrays

  def _split(self, split: str) -> dict:
    start, stop = self._bounds(split)
    a = self.epochs()
    return {
      "embedding": a["embedding"][:, start:stop],
      "logits": a["logits"][:, start:stop],
      "label": a["label"][start:stop],
    }

  def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings of cached epoch 0 [N, D], labels [N])."""
    a = self._split(split)
    return a["embedding"][0], a["label"]

  def load(self, split: str, epoch: int = 0) -> tf.data.Dataset:
    """One ordered pass over cached epoch `epoch`."""
    a = self._split(split)
    emb = a["embedding"][epoch]
    return tf.data.Dataset.from_tensor_slices(
      {"image": emb, "embedding": emb, "logits": a["logits"][epoch], "label": a["label"]}
    )

  def train_lookup(self, split: str, seed: int):
    a = self._split(split)
    emb, logits, labels = (tf.constant(a[k]) for k in ("embedding", "logits", "label"))
    n_epochs = self.num_epochs

    def lookup(index, epoch):
      at = tf.stack([choose_epoch(seed, epoch, n_epochs), tf.cast(index, tf.int64)])
      x = tf.gather_nd(emb, at)
      return {
        "image": x,
        "embedding": x,
        "logits": tf.gather_nd(logits, at),
        "label": tf.gather(labels, index),
      }

    return lookup


@register_prefix("cached")
def _open_cached(path, data_dir=None, **unused_keys):
  """`cached:<dir>`: embeddings from `python -m keras_unc cache`; training on them skips
  the backbone.
  """
  del data_dir, unused_keys
  return CachedSource.open(path)
