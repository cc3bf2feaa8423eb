"""tf.data input pipelines: source -> (shuffle) -> preprocess -> batch.

Convention: images stay uint8 in their raw range unless a preprocessing op
converts them (the models resize and normalise raw images themselves), so the
usual training string is "" or augmentation only, e.g. "flip_lr".

Training streams are infinite and fully deterministic given `seed`: epoch `e`
is a fresh permutation seeded by (seed, e), and every example gets a stateless
`_rng` derived from (seed, input pipeline, absolute position in the stream).
Resuming at `start_step` therefore reproduces the exact same batches,
augmentations included, and costs at most one epoch of skipping (nothing for
in-memory sources, whose permutation is applied to indices).

Three kinds of sources:
  * `source.random_access` (in memory): a global permutation of indices per epoch,
    strided over input pipelines, looked up with `source.train_lookup`.
  * `source.streams_epochs` (e.g. a streamed feature cache, whose epochs hold different
    data): the source builds each training epoch itself with
    `source.train_epoch(split, seed, epoch, num_pipelines, pipeline_id, shuffle_buffer,
    start)`, a dataset of example dicts for training epoch `epoch` (an int64 tensor) of
    that input pipeline from its position `start` on, deterministic given (seed, epoch)
    and holding exactly `len(range(pipeline_id, n, num_pipelines)) - start` examples.
    Its examples may stay encoded (e.g. raw records): `source.decode(examples)` decodes
    one example or a batch of them; with no preprocessing ops the pipeline batches the
    encoded examples and decodes whole batches (no per-example work at all).
  * otherwise (streamed, e.g. TFDS): a static shard per pipeline, shuffled each epoch in
    a bounded buffer.
"""

from __future__ import annotations

import tensorflow as tf

from keras_unc.data.ops import parse_ops
from keras_unc.data.sources import Source

AUTOTUNE = tf.data.AUTOTUNE


def _sharding(batch_size: int, ctx: tf.distribute.InputContext | None):
  """Returns (num_pipelines, pipeline_id, per_replica_batch)."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if ctx is None:
    return 1, 0, batch_size
  r = ctx.num_replicas_in_sync
  if batch_size % r:
    raise ValueError(
      f"Global batch_size={batch_size} is not divisible by the "
      f"{r} replicas in sync; use a multiple of {r} "
      f"(e.g. {batch_size - batch_size % r or r})."
    )
  return ctx.num_input_pipelines, ctx.input_pipeline_id, ctx.get_per_replica_batch_size(batch_size)


def _epoch_seed(seed: int, epoch: tf.Tensor) -> tf.Tensor:
  """A per-epoch int64 shuffle seed, a hash of (seed, epoch)."""
  s = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
  return tf.random.stateless_uniform([], seed=s, minval=None, maxval=None, dtype=tf.int64)


def _train_stream(
  source: Source,
  split: str,
  seed: int,
  n_pipes: int,
  pipe_id: int,
  n: int,
  n_local: int,
  skip: int,
  shuffle_buffer: int,
  positions: bool = True,
) -> tf.data.Dataset:
  """Infinite stream of (position, example-or-index) for this input pipeline (examples
  alone when not `positions`: `streams_epochs` sources only).
  """
  epoch0, offset = divmod(skip, n_local)

  def start_of(e):  # only the first (resumed) epoch starts inside
    return tf.where(e == epoch0, tf.constant(offset, tf.int64), tf.constant(0, tf.int64))

  if source.random_access:

    def epoch(e):
      # A global permutation strided over pipelines: disjoint shards that
      # change every epoch, and O(1) resume (we only slice indices).
      perm = tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), e])
      )
      start = start_of(e)
      idx = perm[pipe_id::n_pipes][start:]
      pos = e * n_local + tf.range(start, n_local, dtype=tf.int64)
      return tf.data.Dataset.from_tensor_slices((pos, idx))
  elif getattr(source, "streams_epochs", False):

    def epoch(e):
      tf.compat.v1.get_default_graph().seed = None  # As below: tensor shuffle seeds.
      start = start_of(e)
      ds = source.train_epoch(split, seed, e, n_pipes, pipe_id, shuffle_buffer, start)
      if not positions:
        return ds
      pos = tf.data.Dataset.range(e * n_local + start, (e + 1) * n_local)
      return tf.data.Dataset.zip(pos, ds)
  else:
    # Static shard, then shuffle within each pipeline's share.
    shard = source.load(split).shard(n_pipes, pipe_id)

    def epoch(e):
      # The epoch seed alone fixes the order: with TF's global seed set to 0
      # (keras.utils.set_random_seed(0), the trainer's default) tf.data's seed
      # helper would test `tensor == 0` in Python and fail while tracing.
      tf.compat.v1.get_default_graph().seed = None
      ds = shard.shuffle(shuffle_buffer, seed=_epoch_seed(seed, e), reshuffle_each_iteration=False)
      start = start_of(e)
      pos = tf.data.Dataset.range(e * n_local + start, (e + 1) * n_local)
      return tf.data.Dataset.zip(pos, ds.skip(start))

  return tf.data.Dataset.counter(epoch0).flat_map(epoch)


def make_dataset(
  source: Source,
  split: str,
  preprocess: str,
  batch_size: int,
  *,
  train: bool,
  seed: int = 0,
  start_step: int = 0,
  input_context: tf.distribute.InputContext | None = None,
  shuffle_buffer: int = 50_000,
  drop_remainder: bool | None = None,
) -> tf.data.Dataset:
  """Builds the input pipeline yielding `(image, label)` batches for Keras.

  Args:
    source: a `Source` (see `get_source`).
    split: split name, slices allowed ("train[:50000]").
    preprocess: op string for `parse_ops` ("" for raw examples).
    batch_size: GLOBAL batch size; with `input_context` each pipeline yields
      per-replica batches of `batch_size / num_replicas_in_sync`.
    train: True: infinite, reshuffled every epoch; False: one ordered pass.
    seed: seeds shuffling and the per-example augmentation seeds.
    start_step: global batches already consumed (resume); train only.
    input_context: from `tf.distribute`; shards examples across pipelines.
    shuffle_buffer: shuffle buffer for streamed sources (TFDS, `cached:`) only;
      in-memory sources are permuted exactly.
    drop_remainder: default True for train (static batch dim), else False.
  """
  pre = parse_ops(preprocess)
  n_pipes, pipe_id, per_batch = _sharding(batch_size, input_context)
  if drop_remainder is None:
    drop_remainder = train
  if start_step < 0 or (start_step and not train):
    raise ValueError(f"start_step={start_step}: must be >= 0, and 0 when train=False.")
  n = source.num_examples(split)
  n_local = len(range(pipe_id, n, n_pipes))
  if n == 0:
    raise ValueError(
      f"Dataset {source.name}/{split} is empty (0 examples): check the "
      "split name and slice (e.g. 'train[:90%]', not 'train[100%:]') and "
      "that the data was prepared (launch/fetch_data.sh, tfds build)."
    )
  if n_local == 0:
    raise ValueError(
      f"{source.name}/{split} has {n} examples: nothing left "
      f"for input pipeline {pipe_id} of {n_pipes}."
    )

  streams = train and getattr(source, "streams_epochs", False)
  decode = getattr(source, "decode", None) if streams else None
  by_batch = streams and not (pre.example_ops or pre.batch_ops)  # Decoded per batch.
  if train:
    skip = start_step * (batch_size // n_pipes)
    ds = _train_stream(
      source, split, seed, n_pipes, pipe_id, n, n_local, skip, shuffle_buffer, not by_batch
    )
  else:
    ds = source.load(split).shard(n_pipes, pipe_id).enumerate()

  if source.random_access and train:
    lookup = source.train_lookup(split, seed)
  base_rng = tf.constant([seed, pipe_id], tf.int64)

  def per_example(pos, ex):
    if decode is not None:
      ex = decode(ex)
    if not isinstance(ex, dict):  # an index into the in-memory arrays
      ex = lookup(ex, pos // n_local)  # (index, epoch) -> example
    ex = dict(ex, _rng=tf.random.experimental.stateless_fold_in(base_rng, pos))
    return pre.example_fn(ex)

  def per_batch_fn(batch):
    batch = pre.batch_fn(batch)
    rank = batch["image"].shape.rank
    want = 2 if getattr(source, "holds_embeddings", False) else 4  # `cached:`: [B, D].
    if rank is not None and rank != want:  # Caught while tracing, before any step runs.
      raise ValueError(
        f"Images of {source.name}/{split} have shape {batch['image'].shape[1:]} after "
        f"preprocessing {preprocess!r}; expected [height, width, channels]. Give "
        "gray images a channel axis ([H, W] -> [H, W, 1]), check get_source.image_key, "
        "or fix the preprocessing ops."
      )
    missing = {"image", "label"} - set(batch)
    if missing:
      raise ValueError(
        f"Preprocessing {preprocess!r} dropped keys {sorted(missing)}; "
        "the pipeline yields (image, label)."
      )
    return batch["image"], batch["label"]

  if by_batch:  # No per-example work: batch the encoded examples, decode per batch.
    ds = ds.batch(per_batch, drop_remainder=drop_remainder)
    ds = ds.map(lambda b: per_batch_fn(decode(b) if decode else b), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)
  ds = ds.map(per_example, num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.batch(per_batch, drop_remainder=drop_remainder)
  ds = ds.map(per_batch_fn, num_parallel_calls=AUTOTUNE, deterministic=True)
  return ds.prefetch(AUTOTUNE)
