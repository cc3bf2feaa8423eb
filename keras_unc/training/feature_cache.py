"""Feature cache: run a frozen pretrained backbone once, then train heads from its outputs.

    python -m keras_unc cache --gin_file=X.gin --workdir=CACHE_DIR [--overwrite]
    python -m keras_unc.main --gin_file=X.gin --gin_param="train.dataset='cached:CACHE_DIR'" ...

The cache run builds the network of the gin config, loads the backbone (and classifier)
weights from `cache_features.checkpoint` (default: `train.warm_start`), and runs it over
`epochs` passes of the training split with the training preprocessing (random
augmentations seeded by (seed, epoch, example)), storing embeddings, classifier logits and
labels in shards of fixed-length records (format: `keras_unc.data.cached`; embeddings and
logits in `dtype` float32 or float16). It runs under the active `tf.distribute` strategy
(else `get_strategy`'s): the missing shards of an epoch are dealt to the replicas, each
replica runs the backbone on its shards' examples and its shards are written as
`e<epoch>-s<shard>-w<replica>.bin`. Augmentations depend only on (seed, epoch, example), so
the cache holds the same values whatever the number of replicas. Each shard is written
under a temporary name and renamed, so a killed run leaves only whole shards and rerunning
the command (with any number of replicas) resumes it. `manifest.json` records
what the cache depends on (backbone config, checkpoint hash, data, preprocessing, epochs);
a rerun with a different config is refused without touching the cache.

Training on `cached:CACHE_DIR` skips the backbone: `train` optimises the head alone
(`build_network(..., separate_head=True).head_network`) on the embeddings, while
evaluators and the export use the full network (backbone from the manifest's checkpoint +
the trained head), so what is exported still takes raw images.
"""

import ast
import hashlib
import json
import logging
import os
import re
import time

import gin
import keras
import numpy as np
import tensorflow as tf

from keras_unc.data import get_source, parse_ops, parse_split
from keras_unc.data.cached import (
  FORMAT_VERSION,
  MANIFEST,
  SHARD_SUFFIX,
  missing_shards,
  num_shards,
  read_manifest,
  record_layout,
  shard_name,
  write_shard,
)
from keras_unc.methods import Deterministic, get_method
from keras_unc.runtime import checkpoints, distribute, files
from keras_unc.training.network import build_network

log = logging.getLogger(__name__)


class StaleCacheError(ValueError):
  """A cache folder was built with a different configuration than the current one."""


# ------------------------------------------------------------------ config and checkpoint


def _resolve(value):
  if isinstance(value, gin.config.ConfigurableReference):
    fn = value.scoped_configurable_fn
    return fn() if value.evaluate else fn
  return value


def _train_binding(name, default=None):
  """The value bound to `train.<name>` (a reference is evaluated), else `default`."""
  return _resolve(gin.get_bindings("train", resolve_references=False).get(name, default))


def _jsonable(value):
  return json.loads(json.dumps(value, default=repr))


def backbone_config():
  """The gin bindings that decide what the backbone computes: `build_network`'s (but the
  freezing flags) and those of the backbone constructor it references.
  """
  bindings = dict(gin.get_bindings("build_network", resolve_references=False))
  for flag in ("freeze_backbone", "separate_head", "freeze"):  # Training flags only.
    bindings.pop(flag, None)
  config = {"build_network": _jsonable(bindings)}
  ref = bindings.get("backbone")
  if isinstance(ref, gin.config.ConfigurableReference):
    config[ref.selector] = _jsonable(gin.get_bindings(ref.selector, resolve_references=False))
  return config


def resolve_checkpoint(path):
  """A checkpoint folder (`ckpt-N`, with meta.json) from itself, a folder of checkpoints, or
  a training workdir (its newest checkpoint).
  """
  if not path:
    raise ValueError(
      "No checkpoint to cache features from: set cache_features.checkpoint "
      "(or train.warm_start) to a checkpoint folder or a training workdir."
    )
  return checkpoints.resolve(path)


def file_sha256(path, chunk=1 << 22):
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(chunk), b""):
      digest.update(block)
  return digest.hexdigest()


def checkpoint_info(path):
  """{"path", "step", "sha256"} of a checkpoint folder (the hash is of its variables)."""
  with open(os.path.join(path, "meta.json")) as f:
    step = json.load(f).get("step")
  return {"path": path, "step": step, "sha256": file_sha256(os.path.join(path, "variables.npz"))}


def load_pretrained(network, path):
  """Loads a checkpoint's weights into `network` (exactly if it was written by the same
  method and architecture, else by layer and weight name) and checks that every backbone
  weight was found. Returns a one-line report.
  """
  arrays, meta = checkpoints.read(path)
  stored = [p for p, _ in meta.get("variables", [])]
  if (
    meta.get("method") == getattr(network, "method_name", None)
    and len(stored) == len(network.variables)
    and all(p == v.path for p, v in zip(stored, network.variables))
  ):
    checkpoints.assign(network.variables, arrays, "model", path)
    return f"all {len(stored)} variables restored"
  keys = {checkpoints.weight_key(p) for p in stored}
  missing = [
    v.path for v in network.backbone.variables if checkpoints.weight_key(v.path) not in keys
  ]
  if missing:
    raise checkpoints.CheckpointMismatchError(
      f"Checkpoint {path} lacks {len(missing)} of the backbone's "
      f"{len(network.backbone.variables)} weights (e.g. {missing[:3]}): it was written for "
      "another backbone (or is a head-only checkpoint of a cached run). Point "
      "cache_features.checkpoint (or train.warm_start) at a checkpoint of the backbone "
      "configured in build_network."
    )
  return "adapted by name: " + checkpoints.adapt(network.variables, arrays, meta)


def _describe_diff(old, new, prefix=""):
  """Lines `field: cached X, now Y` for every leaf where two nested dicts differ."""
  lines = []
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k, "<unset>"), new.get(k, "<unset>")
    if isinstance(a, dict) and isinstance(b, dict):
      lines += _describe_diff(a, b, f"{prefix}{k}.")
    elif a != b:
      lines.append(f"{prefix}{k}: cached {a!r}, now {b!r}")
  return lines


# ------------------------------------------------------------------ held-out check

_BINDING_RE = r"^train\.{}\s*=\s*(.+?)\s*$"


def _training_run_binding(config_text, name):
  """The literal value of `train.<name>` in an operative config, else None."""
  m = re.search(_BINDING_RE.format(name), config_text, re.MULTILINE)
  if m is None:
    return None
  try:
    return ast.literal_eval(m.group(1))
  except (ValueError, SyntaxError):  # A reference or macro: unknown.
    return None


def fitted_examples(checkpoint, dataset, split, num_examples):
  """How many examples of `dataset`/`split` the run that wrote `checkpoint` trained on.

  Reads `train.dataset` and `train.split` from the training workdir's `config.gin` (the
  checkpoint is `WORKDIR/checkpoints/ckpt-N`) and intersects the two index ranges. 0 when
  the datasets or split names differ, or when there is no config to tell.

  Args:
    checkpoint: a checkpoint folder.
    dataset, split: what is cached, e.g. `"mnist"`, `"train[50000:]"`.
    num_examples: `split name -> size` of the dataset (e.g. `source.num_examples`).
  """
  found = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(checkpoint))), "config.gin")
  if not os.path.isfile(found):
    return 0
  with open(found) as f:
    text = f.read()
  trained = _training_run_binding(text, "split")
  trained = "train" if trained is None and "train.split" not in text else trained
  if _training_run_binding(text, "dataset") != dataset or not isinstance(trained, str):
    return 0
  name = re.match(r"\w*", split.replace(" ", "")).group(0)
  if re.match(r"\w*", trained.replace(" ", "")).group(0) != name:
    return 0
  try:
    _, lo_a, hi_a = parse_split(trained, {name: num_examples(name)})
  except ValueError:  # A malformed split in that config: unknown.
    return 0
  _, lo_b, hi_b = parse_split(split, {name: num_examples(name)})
  return max(0, min(hi_a, hi_b) - max(lo_a, lo_b))


# ------------------------------------------------------------------ building the cache


def _write_manifest(cache_dir, manifest):
  files.write_json(os.path.join(cache_dir, MANIFEST), manifest, indent=1)


def _clear(cache_dir):
  for name in os.listdir(cache_dir):
    if name == MANIFEST or name.endswith((SHARD_SUFFIX, ".npz")) or ".tmp" in name:
      os.remove(os.path.join(cache_dir, name))


def extractor(network):
  """`images -> {"embedding": backbone output, "logits": classifier logits [B, C]}` of a
  network built with `separate_head=True`.
  """
  logits = network.head_network(network.features)["logits"]
  return keras.Model(network.inputs[0], {"embedding": network.features, "logits": logits})


@gin.configurable(denylist=["cache_dir", "overwrite"])
def cache_features(
  cache_dir,
  overwrite=False,
  *,
  checkpoint=None,
  epochs=1,
  shard_size=4096,
  batch_size=256,
  dtype="float32",
  dataset=None,
  split=None,
  preprocess=None,
  seed=None,
  method=None,
  jit_compile=False,
  verbose=1,
):
  """Builds (or resumes) the feature cache in `cache_dir`.

  Args:
    cache_dir: output folder (`manifest.json` and `e<epoch>-s<shard>.npz` shards).
    overwrite: delete a cache built with another configuration and rebuild it.
    checkpoint: checkpoint folder or training workdir with the pretrained weights
      (default: `train.warm_start`).
    epochs: number E of augmented passes over the split.
    shard_size: examples per shard (the unit of resumption and of a replica's work).
    batch_size: global backbone batch size (split over the replicas).
    dtype: storage dtype of embeddings and logits, 'float32' or 'float16' (half the
      disk and I/O; read back as float32).
    dataset, split, preprocess, seed, method: default to the `train.*` bindings, so the
      training config itself builds its cache.
    jit_compile: XLA-compile the backbone.
    verbose: print one line per epoch.

  Returns:
    dict with `path`, `manifest`, `written` and `skipped` shard counts and `seconds`.
  """
  start = time.perf_counter()
  dataset = dataset or _train_binding("dataset")
  split = split or _train_binding("split", "train")
  preprocess = _train_binding("preprocess", "") if preprocess is None else preprocess
  seed = _train_binding("seed", 0) if seed is None else seed
  method = method or _train_binding("method") or Deterministic()
  method = get_method(method) if isinstance(method, str) else method
  if not dataset:
    raise ValueError("No dataset to cache: set train.dataset (or cache_features.dataset).")
  if str(dataset).startswith("cached:"):
    raise ValueError(
      f"train.dataset is {dataset!r}, already a cache: cache_features needs "
      "the image dataset the cache is built from (set cache_features.dataset)."
    )
  record_layout(1, 1, dtype)  # Refuses an unknown dtype before anything is touched.
  if epochs < 1 or shard_size < 1:
    raise ValueError(
      f"cache_features.epochs ({epochs}) and shard_size ({shard_size}) must be >= 1."
    )
  pre = parse_ops(preprocess)
  if pre.batch_ops:
    raise ValueError(
      f"Preprocessing {preprocess!r} has batch-level ops (mixup, cutmix): they "
      "mix examples and labels across a batch and cannot be cached per example. "
      "Remove them from train.preprocess (or set cache_features.preprocess)."
    )
  if method.members != 1:
    raise ValueError(
      f"Method {method.name!r} tiles the backbone into {method.members} "
      "members: a cache holds one frozen embedding per image; cache with a "
      "single-member method (e.g. deterministic or url)."
    )
  source = get_source(dataset)
  n = source.num_examples(split)
  ckpt = checkpoint_info(resolve_checkpoint(checkpoint or _train_binding("warm_start")))
  key = {
    "format_version": FORMAT_VERSION,
    "dataset": dataset,
    "split": split,
    "num_examples": n,
    "preprocess": preprocess,
    "epochs": int(epochs),
    "seed": int(seed),
    "shard_size": int(shard_size),
    "dtype": dtype,
    "backbone": backbone_config(),
    "checkpoint_sha256": ckpt["sha256"],
  }

  os.makedirs(cache_dir, exist_ok=True)
  cache_dir = os.path.abspath(cache_dir)
  old = read_manifest(cache_dir)
  if old is not None and old.get("key") != key:
    if not overwrite:
      diff = "\n  ".join(_describe_diff(old.get("key", {}), key))
      raise StaleCacheError(
        f"Feature cache {cache_dir} was built with a different configuration:\n  {diff}\n"
        "It was left untouched. Choose a new --workdir for this configuration, or pass "
        "--overwrite to delete it and rebuild it here."
      )
    log.warning("Overwriting the stale feature cache %s", cache_dir)
    _clear(cache_dir)
    old = None
  elif old is None and any(x.endswith((SHARD_SUFFIX, ".npz")) for x in os.listdir(cache_dir)):
    if not overwrite:
      raise StaleCacheError(
        f"{cache_dir} holds shards but no {MANIFEST}: not a cache this "
        "code wrote. Choose a new --workdir, or pass --overwrite."
      )
    _clear(cache_dir)
  leftovers = [x for x in os.listdir(cache_dir) if ".tmp" in x]
  for name in leftovers:  # Shards of a writer that was killed: redone below.
    os.remove(os.path.join(cache_dir, name))
  if leftovers:
    log.warning("Removed %d partial file(s) of an interrupted run: %s", len(leftovers), leftovers)

  fitted = fitted_examples(ckpt["path"], dataset, split, source.num_examples)
  if fitted:
    log.warning(
      "%d of the %d examples of %s/%s being cached were in the training split of %s: the "
      "classifier's cross-entropy on them is ~0, so a loss-prediction module (URL pred-net) "
      "fitted on this cache learns little. Cache a held-out split the backbone did not train "
      "on (e.g. train on 'train[:50000]', cache 'train[50000:]': demo/url_mnist_backbone.gin).",
      fitted,
      n,
      dataset,
      split,
      ckpt["path"],
    )
  strategy = tf.distribute.get_strategy() if tf.distribute.has_strategy() else None
  strategy = strategy or distribute.get_strategy()
  with strategy.scope():
    network = build_network(
      method, source.num_classes, source.image_shape, freeze_backbone=True, separate_head=True
    )
  loaded = load_pretrained(network, ckpt["path"])
  log.info("Cache backbone from %s: %s", ckpt["path"], loaded)
  manifest = {
    "format_version": FORMAT_VERSION,
    "key": key,
    "checkpoint": ckpt,
    "method": method.name,
    "num_classes": source.num_classes,
    "image_shape": list(source.image_shape),
    "embedding_dim": int(network.features.shape[-1]),
    "layout": record_layout(network.features.shape[-1], source.num_classes, dtype),
    "fitted_examples": fitted,  # Cached examples the backbone trained on (0: held out).
    "gin_config": gin.config_str(),
    "complete": False,
  }
  if old is None:
    _write_manifest(cache_dir, manifest)
  todo = set(missing_shards(cache_dir, manifest))
  total = epochs * num_shards(n, shard_size)
  if todo:
    with strategy.scope():
      model = extractor(network)
    _run(
      model,
      strategy,
      source,
      split,
      pre,
      seed,
      epochs,
      shard_size,
      batch_size,
      cache_dir,
      todo,
      manifest["layout"],
      jit_compile,
      verbose,
    )
  left = missing_shards(cache_dir, manifest)
  if left:  # Another worker of a multi-worker job still writes its shards.
    log.warning(
      "%d shard(s) still missing (written by other workers?): rerun to finish.", len(left)
    )
    return {
      "path": cache_dir,
      "manifest": manifest,
      "written": len(todo) - len(left),
      "skipped": total - len(todo),
      "seconds": time.perf_counter() - start,
    }
  manifest["complete"] = True
  manifest["seconds"] = (old or {}).get("seconds", 0.0) + time.perf_counter() - start
  _write_manifest(cache_dir, manifest)
  return {
    "path": cache_dir,
    "manifest": manifest,
    "written": len(todo),
    "skipped": total - len(todo),
    "seconds": time.perf_counter() - start,
  }


def _worker(strategy):
  """(first global replica id of this process, its replicas, replicas in sync)."""
  try:
    local = len(strategy.extended.worker_devices)
  except RuntimeError:  # The default strategy: one replica.
    local = 1
  task = getattr(getattr(strategy, "cluster_resolver", None), "task_id", None) or 0
  return int(task) * local, local, strategy.num_replicas_in_sync


def _run(
  model,
  strategy,
  source,
  split,
  pre,
  seed,
  epochs,
  shard_size,
  batch_size,
  cache_dir,
  todo,
  layout,
  jit_compile,
  verbose,
):
  """Runs the backbone over the missing shards, epoch by epoch: the shards are dealt to
  the replicas (shard `pending[i]` to global replica `i % replicas`); every step each
  local replica embeds the next batch of its own shards, and each shard is written by
  its replica as soon as it is complete.
  """
  forward = tf.function(
    lambda x: model(x, training=False), jit_compile=jit_compile, reduce_retracing=True
  )  # The last batch of a shard is smaller.

  @tf.function(reduce_retracing=True)
  def step(values):
    return strategy.run(forward, args=(values,))

  first, local, replicas = _worker(strategy)
  per_replica = max(1, batch_size // replicas)
  n = source.num_examples(split)
  for e in range(epochs):
    pending = [s for s in range(num_shards(n, shard_size)) if (e, s) in todo]
    mine = [pending[first + r :: replicas] for r in range(local)]
    if not any(mine):
      continue
    t0 = time.perf_counter()
    epoch_rng = tf.constant([seed, e], tf.int64)

    def prepare(index, ex, epoch_rng=epoch_rng):
      ex = dict(ex, _rng=tf.random.experimental.stateless_fold_in(epoch_rng, index))
      ex = pre.example_fn(ex)
      return {"image": tf.cast(ex["image"], tf.float32), "label": ex["label"], "index": index}

    def batches(shards):
      wanted = tf.constant(shards, tf.int64)
      ds = (
        source.load(split)
        .enumerate()
        .filter(lambda i, _, w=wanted: tf.reduce_any(tf.equal(i // shard_size, w)))
      )
      ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      return iter(ds.batch(per_replica).prefetch(tf.data.AUTOTUNE))

    streams = [batches(m) if m else None for m in mine]
    buffers = [{k: [] for k in ("embedding", "logits", "label", "index")} for _ in range(local)]

    def flush(r, upto, e=e, buffers=buffers):
      """Writes replica r's complete shards below example index `upto`."""
      buffer = buffers[r]
      index = np.concatenate(buffer["index"]) if buffer["index"] else np.zeros(0, np.int64)
      while index.size:
        s = int(index[0]) // shard_size
        end = min((s + 1) * shard_size, n)
        if upto < end:
          break
        take = index < end
        arrays = {k: np.concatenate(v) for k, v in buffer.items()}
        shard = {k: a[take] for k, a in arrays.items()}
        shard["epoch"] = np.full(int(take.sum()), e, np.int64)
        write_shard(os.path.join(cache_dir, shard_name(e, s, first + r)), shard, layout)
        for k, a in arrays.items():
          buffer[k] = [a[~take]]
        index = index[~take]

    while True:
      got = [next(it, None) if it is not None else None for it in streams]
      live = [b for b in got if b is not None]
      if not live:
        break
      # An exhausted replica repeats a live batch; its output is dropped.
      streams = [it if b is not None else None for it, b in zip(streams, got)]
      images = [(b if b is not None else live[0])["image"] for b in got]
      out = step(
        strategy.experimental_distribute_values_from_function(
          lambda ctx, images=images: images[ctx.replica_id_in_sync_group - first]
        )
      )
      outs = strategy.experimental_local_results(out)
      for r, batch in enumerate(got):
        if batch is None:
          continue
        logits = outs[r]["logits"]
        buffers[r]["embedding"].append(np.asarray(outs[r]["embedding"], np.float32))
        buffers[r]["logits"].append(
          np.asarray(logits[:, 0] if logits.shape.rank == 3 else logits, np.float32)
        )
        buffers[r]["label"].append(batch["label"].numpy())
        buffers[r]["index"].append(batch["index"].numpy())
        flush(r, int(batch["index"][-1]) + 1)
    for r in range(local):
      flush(r, n)
    if verbose:
      log.info(
        "cache epoch %d/%d: %d shard(s) on %d replica(s) in %.1fs",
        e + 1,
        epochs,
        sum(len(m) for m in mine),
        replicas,
        time.perf_counter() - t0,
      )


# ------------------------------------------------------------------ training from a cache


def build_cached_network(method, source):
  """The full network for training on `cached:` data: backbone (weights from the
  manifest's checkpoint, frozen) + head as `network.head_network`, which is what trains.

  Refuses a gin config whose backbone differs from the cache's, or a checkpoint that
  changed since the cache was built, since the export would not be the cached model.
  """
  manifest = source.manifest
  diff = _describe_diff(manifest["key"]["backbone"], backbone_config())
  if diff:
    raise StaleCacheError(
      f"The backbone config differs from the one feature cache {source.path} was built "
      "with:\n  " + "\n  ".join(diff) + "\nUse the gin config the cache was built with "
      "(its manifest.json keeps it under 'gin_config'), or build a new cache."
    )
  ckpt = manifest["checkpoint"]
  if not os.path.exists(ckpt["path"]):
    raise FileNotFoundError(
      f"Checkpoint {ckpt['path']} of feature cache {source.path} is "
      "gone: the full network (for evaluation and export) needs it."
    )
  if file_sha256(os.path.join(ckpt["path"], "variables.npz")) != ckpt["sha256"]:
    raise StaleCacheError(
      f"Checkpoint {ckpt['path']} changed since feature cache "
      f"{source.path} was built from it: rebuild the cache (--overwrite)."
    )
  network = build_network(
    method,
    source.num_classes,
    tuple(manifest["image_shape"]),
    freeze_backbone=True,
    separate_head=True,
  )
  if network.features.shape[-1] != source.image_shape[0]:
    raise StaleCacheError(
      f"The backbone gives {network.features.shape[-1]}-d embeddings, the "
      f"cache holds {source.image_shape[0]}-d ones: rebuild the cache."
    )
  report = load_pretrained(network, ckpt["path"])
  log.info("Cached training: backbone and head from %s (%s)", ckpt["path"], report)
  _check_classifier(network.head_network, source)
  return network


def _check_classifier(head, source, count=64):
  """Warns when the head's initial logits are not the cached ones (the classifier was not
  initialised from the cache's checkpoint, e.g. its layer names differ).
  """
  a = source.read(0, 0, min(count, source.num_examples(source.manifest["key"]["split"])))
  emb, cached = a["embedding"], a["logits"]
  logits = np.asarray(head(emb, training=False)["logits"])
  logits = logits[:, 0] if logits.ndim == 3 else logits
  gap = float(np.max(np.abs(logits - cached))) if logits.shape == cached.shape else np.inf
  if gap > 1e-3 * max(1.0, float(np.max(np.abs(cached)))):
    log.warning(
      "The head's classifier logits differ from the cached ones by %.3g: it was "
      "not initialised from the cache's checkpoint (layer names differ?).",
      gap,
    )


def cached_training_args(source, preprocess, warm_start):
  """(preprocess, warm_start) for training on a cache: its augmentations are already in
  the cache, and the weights of its checkpoint are already in the network.
  """
  key = source.manifest["key"]
  if preprocess and preprocess != key["preprocess"]:
    raise StaleCacheError(
      f"train.preprocess is {preprocess!r}, but feature cache {source.path} holds "
      f"{key['epochs']} epoch(s) preprocessed with {key['preprocess']!r}: build a cache with "
      "the new preprocessing (new --workdir for `python -m keras_unc cache`), or set train.preprocess "
      f"to {key['preprocess']!r} or ''."
    )
  if warm_start and resolve_checkpoint(warm_start) == source.manifest["checkpoint"]["path"]:
    warm_start = None  # Already loaded by `build_cached_network`.
  return "", warm_start
