"""`cached:<dir>`: a feature cache as a data source (see `keras_unc.training.feature_cache`).

A cache holds, for E augmented epochs of one split, the frozen backbone's embedding,
the pretrained classifier's logits and the label of every example, next to a
`manifest.json`. As a source it yields `{"embedding": float32 [D], "logits": float32 [C],
"label": int64 []}` (plus "image", the embedding again, so the generic pipeline and Keras
see `(embedding, label)`). Training epoch `t` reads cached epoch `choose_epoch(seed, t, E)`:
a fresh random order of the E epochs every E training epochs, deterministic given the seed.

Format (version 2). Shard `e<epoch>-s<shard>-w<writer>.bin` holds examples
`[shard * shard_size, (shard + 1) * shard_size)` of cached epoch `epoch`, in index order,
written by replica `writer` of the strategy that built the cache. It is a bare sequence of
fixed-length little-endian records, one per example:

    embedding  dtype [D]     (dtype: the manifest's `layout`, float32 or float16)
    logits     dtype [C]
    label      int64
    index      int64         (position in the cached split)
    epoch      int64         (augmentation epoch)

`manifest["layout"]` records each field's dtype, shape and byte offset and the record size.
Why this format rather than TFRecord or `.npy`:

  * `tf.data.FixedLengthRecordDataset` reads it with no protobuf parsing and no Python in
    the loop; `tf.io.decode_raw` turns a record into tensors. A TFRecord `Example` would
    parse a protobuf per example, `.npy` shards need `numpy` (Python) or a custom header
    skip per file.
  * Record `i` of a shard sits at byte `i * record_bytes`: an input pipeline reads exactly
    its range of a shard (`header_bytes`/`footer_bytes`), and NumPy reads any slice with
    one `np.fromfile` (`CachedSource.read`), so nothing needs an index file.
  * No new dependency; the file is the NumPy structured array of the layout (`tobytes()`).

Reading. By default the source streams from disk (`streams_epochs`, see
`keras_unc.data.pipeline`): each input pipeline owns a contiguous range of the split's
examples, reads its pieces of the cached epoch's shards in an order drawn from (seed,
epoch, pipeline), interleaved, shuffles them in a bounded buffer (`make_dataset`'s
`shuffle_buffer`, in raw records) and decodes them; memory does not grow with the cache.
`load` (evaluation) streams one ordered pass. `arrays(split)` reads the split of cached
epoch 0 into NumPy on demand. `cached_source.in_memory = True` (gin) opens the cache in
memory instead (E x N x D float32, exact permutations, `random_access`), the faster choice
for caches that fit in RAM and what the active-learning loop needs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import ClassVar

import gin
import numpy as np
import tensorflow as tf

from keras_unc.data.sources import Source, check_labels, parse_split, register_prefix
from keras_unc.runtime import files

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
DTYPES = ("float32", "float16")
SHARD_SUFFIX = ".bin"
_SHARD_RE = re.compile(r"^e(\d+)-s(\d+)-w(\d+)\.bin$")
_EPOCH_SALT = 0x5EED_CAC4E  # Keeps the epoch choice independent of the pipeline's shuffles.
_ORDER_SALT = 0x5EED_0FDE5  # Shard order and shuffle of a streamed epoch.
_CYCLE = 8  # Shard pieces read at once by a streamed epoch.


def shard_name(epoch: int, shard: int, writer: int = 0) -> str:
  return f"e{epoch:03d}-s{shard:05d}-w{writer:03d}{SHARD_SUFFIX}"


def num_shards(num_examples: int, shard_size: int) -> int:
  return -(-num_examples // shard_size)


def record_layout(embedding_dim: int, num_classes: int, dtype: str = "float32") -> dict:
  """The byte layout of one record (stored in the manifest as `layout`)."""
  if dtype not in DTYPES:
    raise ValueError(
      f"Unknown feature cache dtype {dtype!r}: choose one of {', '.join(DTYPES)} "
      "(cache_features.dtype)."
    )
  fields, offset = [], 0
  for name, kind, shape in (
    ("embedding", dtype, [int(embedding_dim)]),
    ("logits", dtype, [int(num_classes)]),
    ("label", "int64", []),
    ("index", "int64", []),
    ("epoch", "int64", []),
  ):
    fields.append({"name": name, "dtype": kind, "shape": shape, "offset": offset})
    offset += np.dtype(kind).itemsize * int(np.prod(shape, dtype=np.int64))
  return {"byte_order": "little", "record_bytes": offset, "fields": fields}


def record_dtype(layout: dict) -> np.dtype:
  """The NumPy structured dtype of a record (packed, little-endian)."""
  return np.dtype(
    [
      (f["name"], np.dtype(f["dtype"]).newbyteorder("<"), tuple(f["shape"]))
      for f in layout["fields"]
    ]
  )


def write_shard(path: str, arrays: dict, layout: dict) -> str:
  """Writes one shard atomically (temporary name, fsync, rename): `arrays` maps each field
  of `layout` to an array with one row per example (floats are cast to the layout's dtype).
  """
  rec = record_dtype(layout)
  n = len(arrays["label"])
  out = np.empty(n, rec)
  for f in layout["fields"]:
    out[f["name"]] = np.asarray(arrays[f["name"]]).reshape((n, *f["shape"]))
  with files.atomic_write(path, "wb") as f:
    f.write(out.tobytes())
  return path


def write_cache(
  path: str,
  shard_arrays,
  *,
  num_examples: int,
  embedding_dim: int,
  num_classes: int,
  epochs: int = 1,
  shard_size: int = 4096,
  dtype: str = "float32",
  split: str = "train",
) -> str:
  """Writes a complete cache with no backbone (synthetic caches for tests and benchmarks;
  real ones come from `python -m keras_unc cache`) through `write_shard`.

  `shard_arrays(epoch, start, stop)` gives `{"embedding" [n, D], "logits" [n, C],
  "label" [n]}` of examples [start, stop) of cached epoch `epoch`.
  """
  layout = record_layout(embedding_dim, num_classes, dtype)
  os.makedirs(path, exist_ok=True)
  for e in range(epochs):
    for s in range(num_shards(num_examples, shard_size)):
      start, stop = s * shard_size, min((s + 1) * shard_size, num_examples)
      arrays = dict(shard_arrays(e, start, stop))
      arrays["index"] = np.arange(start, stop, dtype=np.int64)
      arrays["epoch"] = np.full(stop - start, e, np.int64)
      write_shard(os.path.join(path, shard_name(e, s)), arrays, layout)
  key = {"format_version": FORMAT_VERSION, "split": split, "num_examples": num_examples}
  key.update(epochs=epochs, shard_size=shard_size, dtype=dtype, preprocess="", synthetic=True)
  manifest = {
    "format_version": FORMAT_VERSION,
    "key": key,
    "num_classes": num_classes,
    "embedding_dim": embedding_dim,
    "layout": layout,
    "complete": True,
  }
  files.write_json(os.path.join(path, MANIFEST), manifest, indent=1)
  return path


def shard_files(path: str) -> dict:
  """`(epoch, shard) -> file name` of the finished shards in folder `path` (the lowest
  writer id where several writers wrote the same shard).
  """
  found = {}
  for name in sorted(os.listdir(path)):
    m = _SHARD_RE.match(name)
    if m:
      found.setdefault((int(m.group(1)), int(m.group(2))), name)
  return found


def read_manifest(path: str) -> dict | None:
  """The manifest of the cache in folder `path`, or None if there is none."""
  file = os.path.join(path, MANIFEST)
  if not os.path.exists(file):
    return None
  with open(file) as f:
    return json.load(f)


def missing_shards(path: str, manifest: dict) -> list[tuple[int, int]]:
  """(epoch, shard) of the shards the manifest promises that are not (yet) on disk."""
  key = manifest["key"]
  n = num_shards(key["num_examples"], key["shard_size"])
  done = shard_files(path)
  return [(e, s) for e in range(key["epochs"]) for s in range(n) if (e, s) not in done]


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


def pipeline_range(num_examples: int, num_pipelines: int, pipeline_id: int) -> tuple[int, int]:
  """Contiguous [start, stop) of the examples owned by one input pipeline; its size is
  `len(range(pipeline_id, num_examples, num_pipelines))`, as `make_dataset` expects.
  """
  q, r = divmod(num_examples, num_pipelines)
  start = pipeline_id * q + min(pipeline_id, r)
  return start, start + q + (pipeline_id < r)


@dataclasses.dataclass
class CachedSource(Source):
  """Embeddings, logits and labels of a feature cache (build it with `python -m keras_unc cache`),
  streamed from disk.

  `image_shape` is `(D,)`, the embedding: a network trained on this source is the head
  alone. The cached split keeps its name (a cache of "train[50000:]" has a split
  "train" of its 10000 examples; slices of it work as usual, relative to the cache), and
  the split string the cache was built from ("train[50000:]") reads the whole cache, so
  one gin config serves both the cache and the training from it. `manifest` is the
  cache's manifest (backbone, checkpoint, preprocessing, epochs, layout).
  """

  path: str = ""
  manifest: dict = dataclasses.field(default_factory=dict, repr=False)
  split_sizes: dict = dataclasses.field(default_factory=dict)
  shards: dict = dataclasses.field(default_factory=dict, repr=False)  # (e, s) -> file.
  random_access: ClassVar[bool] = False
  streams_epochs: ClassVar[bool] = True  # `train_epoch`: a stream per training epoch.
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
        f"epoch {missing[0][0]} shard {missing[0][1]}); the writer was interrupted. "
        "Rerun the same `python -m keras_unc cache` command to finish it (finished shards "
        "are kept)."
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
      shards=shard_files(path),
    )

  @property
  def num_epochs(self) -> int:
    return int(self.manifest["key"]["epochs"])

  @property
  def layout(self) -> dict:
    return self.manifest["layout"]

  def _bounds(self, split: str) -> tuple[int, int]:
    built_from = self.manifest["key"]["split"]
    if split.replace(" ", "") == built_from.replace(" ", ""):  # The whole cache.
      return 0, int(self.manifest["key"]["num_examples"])
    _, start, stop = parse_split(split, self.split_sizes)
    return start, stop

  def num_examples(self, split: str) -> int:
    start, stop = self._bounds(split)
    return stop - start

  def _pieces(self, start: int, stop: int) -> list[tuple[int, int, int, int]]:
    """(shard, first, end, shard length) of the shard ranges covering examples [start, stop)."""
    size, n = self.manifest["key"]["shard_size"], self.manifest["key"]["num_examples"]
    out = []
    for s in range(start // size, num_shards(stop, size)):
      lo, hi = s * size, min((s + 1) * size, n)
      out.append((s, max(start, lo) - lo, min(stop, hi) - lo, hi - lo))
    return out

  # ---------------------------------------------------------------- NumPy reads

  def read(self, epoch: int, start: int, stop: int) -> dict:
    """Examples [start, stop) of cached epoch `epoch` as NumPy arrays (floats float32)."""
    rec = record_dtype(self.layout)
    size = self.manifest["key"]["shard_size"]
    parts = []
    for s, lo, hi, _ in self._pieces(start, stop):
      file = os.path.join(self.path, self.shards[(epoch, s)])
      parts.append(np.fromfile(file, rec, count=hi - lo, offset=lo * rec.itemsize))
      if len(parts[-1]) != hi - lo or (hi > lo and parts[-1]["index"][0] != s * size + lo):
        raise ValueError(
          f"Feature cache {self.path}: shard {file} is truncated or out of order; "
          "rebuild it (`--overwrite`)."
        )
    cat = np.concatenate(parts) if parts else np.empty(0, rec)
    out = {k: np.ascontiguousarray(cat[k]) for k in rec.names}  # Copies: `cat` is freed.
    for k in ("embedding", "logits"):
      out[k] = out[k].astype(np.float32, copy=False)
    return out

  def epochs(self) -> dict:
    """All cached arrays in memory: embedding [E, N, D], logits [E, N, C], label [N]."""
    if not hasattr(self, "_arrays"):
      n = int(self.manifest["key"]["num_examples"])
      emb, logits, labels = [], [], None
      for e in range(self.num_epochs):
        cat = self.read(e, 0, n)
        if not np.array_equal(cat["index"], np.arange(n)):
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

  def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings of cached epoch 0 [N, D] float32, labels [N]), read on demand."""
    a = self.read(0, *self._bounds(split))
    check_labels(a["label"], self.num_classes, self.name)
    return a["embedding"], a["label"]

  # ---------------------------------------------------------------- tf.data reads

  def decode(self, records: tf.Tensor) -> dict:
    """Raw records (a string tensor of any shape S) -> `{"image", "embedding": float32
    S + [D], "logits": float32 S + [C], "label": int64 S}`.
    """
    lead = tf.shape(records)
    out = {}
    for f in self.layout["fields"]:
      if f["name"] not in ("embedding", "logits", "label"):
        continue
      dtype = tf.as_dtype(f["dtype"])
      nbytes = dtype.size * int(np.prod(f["shape"], dtype=np.int64))
      value = tf.io.decode_raw(
        tf.strings.substr(records, f["offset"], nbytes), dtype, little_endian=True
      )
      value = tf.reshape(value, tf.concat([lead, tf.constant(f["shape"], tf.int32)], 0))
      out[f["name"]] = tf.cast(value, tf.float32) if dtype.is_floating else value
    emb = out["embedding"]
    return {"image": emb, "embedding": emb, "logits": out["logits"], "label": out["label"]}

  def _piece_tables(self, start: int, stop: int):
    """Per piece: file names [E, K], header and footer bytes [K]."""
    pieces = self._pieces(start, stop)
    rb = self.layout["record_bytes"]
    names = [
      [os.path.join(self.path, self.shards[(e, s)]) for s, *_ in pieces]
      for e in range(self.num_epochs)
    ]
    header = [lo * rb for _, lo, _, _ in pieces]
    footer = [(m - hi) * rb for _, _, hi, m in pieces]
    return (
      tf.constant(names, tf.string),
      tf.constant(header, tf.int64),
      tf.constant(footer, tf.int64),
    )

  def _records(self, name, header, footer):
    return tf.data.FixedLengthRecordDataset(
      name, self.layout["record_bytes"], header_bytes=header, footer_bytes=footer
    )

  def load(self, split: str, epoch: int = 0) -> tf.data.Dataset:
    """One ordered pass over cached epoch `epoch`, streamed from disk."""
    names, header, footer = self._piece_tables(*self._bounds(split))
    ds = tf.data.Dataset.from_tensor_slices((names[epoch], header, footer))
    ds = ds.flat_map(self._records)
    return ds.map(self.decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def train_epoch(
    self,
    split: str,
    seed: int,
    epoch: tf.Tensor,
    num_pipelines: int,
    pipeline_id: int,
    shuffle_buffer: int,
    start: tf.Tensor,
  ) -> tf.data.Dataset:
    """Training epoch `epoch` of one input pipeline, from position `start` on (the
    `streams_epochs` hook of `make_dataset`): the pipeline's contiguous range of the
    split in cached epoch `choose_epoch(seed, epoch, E)`, its shard pieces in an order
    drawn from (seed, epoch, pipeline), interleaved, shuffled in a buffer of
    `shuffle_buffer` records; raw records, for `decode`.
    """
    lo, hi = self._bounds(split)
    a, b = pipeline_range(hi - lo, num_pipelines, pipeline_id)
    names, header, footer = self._piece_tables(lo + a, lo + b)
    key = tf.random.experimental.stateless_fold_in(
      tf.random.experimental.stateless_fold_in(
        tf.constant([seed, _ORDER_SALT], tf.int64), tf.cast(epoch, tf.int64)
      ),
      pipeline_id,
    )
    order = tf.random.experimental.stateless_shuffle(
      tf.range(tf.shape(header, out_type=tf.int64)[0]), seed=key
    )
    chosen = tf.gather(names[choose_epoch(seed, epoch, self.num_epochs)], order)
    ds = tf.data.Dataset.from_tensor_slices(
      (chosen, tf.gather(header, order), tf.gather(footer, order))
    )
    cycle = min(_CYCLE, int(header.shape[0]))
    ds = ds.interleave(
      self._records, cycle_length=cycle, num_parallel_calls=cycle, deterministic=True
    )
    shuffle_seed = tf.random.stateless_uniform(
      [],
      seed=tf.random.experimental.stateless_fold_in(key, 1),
      minval=None,
      maxval=None,
      dtype=tf.int64,
    )
    # Raw records (decoded by `decode`, per batch in `make_dataset`).
    return ds.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False).skip(start)


@dataclasses.dataclass
class InMemoryCachedSource(CachedSource):
  """A feature cache held in memory (E x N x D float32), with exact permutations
  (`cached_source.in_memory = True`).
  """

  random_access: ClassVar[bool] = True
  streams_epochs: ClassVar[bool] = False

  def load(self, split: str, epoch: int = 0) -> tf.data.Dataset:
    """One ordered pass over cached epoch `epoch`."""
    start, stop = self._bounds(split)
    a = self.epochs()
    emb = a["embedding"][epoch, start:stop]
    return tf.data.Dataset.from_tensor_slices(
      {
        "image": emb,
        "embedding": emb,
        "logits": a["logits"][epoch, start:stop],
        "label": a["label"][start:stop],
      }
    )

  def train_lookup(self, split: str, seed: int):
    start, stop = self._bounds(split)
    a = self.epochs()
    emb, logits = (tf.constant(a[k][:, start:stop]) for k in ("embedding", "logits"))
    labels = tf.constant(a["label"][start:stop])
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


@gin.configurable("cached_source")
def open_cache(path: str, in_memory: bool = False) -> CachedSource:
  """Opens the feature cache in folder `path`.

  Args:
    path: the cache folder (`python -m keras_unc cache --workdir=...`).
    in_memory: False: stream it from disk (memory independent of the cache size);
      True: load it whole (E x N x D float32), random access and exact permutations.
  """
  return (InMemoryCachedSource if in_memory else CachedSource).open(path)


@register_prefix("cached")
def _open_cached(path, data_dir=None, **unused_keys):
  """`cached:<dir>`: embeddings from `python -m keras_unc cache`; training on them skips
  the backbone.
  """
  del data_dir, unused_keys
  return open_cache(path)
