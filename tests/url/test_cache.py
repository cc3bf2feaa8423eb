"""Feature cache (`python -m keras_unc cache`) and the `cached:` source on the tiny digits config.

The built caches are module fixtures shared by the tests: `augmented` (2 flip-augmented
epochs, float32, one replica), `two_replicas` (the same built by a 2-replica
MirroredStrategy) and `half` (epoch 0 of it in float16).
"""

import json
import logging
import os
import shutil
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from keras_unc import config
from keras_unc.data import get_source, make_dataset
from keras_unc.data.cached import (
  CachedSource,
  InMemoryCachedSource,
  choose_epoch,
  read_manifest,
  record_dtype,
  shard_name,
  write_cache,
)
from keras_unc.methods import Deterministic
from keras_unc.runtime import checkpoints
from keras_unc.training import feature_cache as cache
from keras_unc.training.network import build_network
from tests.e2e.helpers import REPO, TINY, run_inprocess

QUIET = ["train.evaluators=[]", "train.export_at_end=False"]
# Streamed vs in-memory training of the head (300 steps, batch 32, same cache and seed): they
# differ only by the order of the examples, so test metrics agree within these absolute gaps
# (measured: <= 0.007 accuracy, 0.005 NLL and ECE; between two seeds, up to 0.007).
STREAMED_TOL = {"accuracy": 0.03, "nll": 0.03, "ece": 0.03}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A briefly trained tiny model: the 'pretrained' backbone + classifier to cache."""
  workdir = tmp_path_factory.mktemp("pretrained")
  run_inprocess(workdir, params=QUIET + ["train.total_steps=20"])
  return str(workdir)


def build(cache_dir, *params, overwrite=False):
  gin.clear_config()
  config.parse([TINY], list(params))
  return cache.cache_features(str(cache_dir), overwrite)


def shard_arrays(path):
  layout = read_manifest(os.path.dirname(path))["layout"]
  rec = np.fromfile(path, record_dtype(layout))
  return {k: rec[k] for k in rec.dtype.names}


def snapshot(path):
  """{file name: (size, mtime)} of a folder: what a refusal must leave untouched."""
  return {x: (os.path.getsize(path / x), os.path.getmtime(path / x)) for x in os.listdir(path)}


@pytest.fixture(scope="module")
def augmented(pretrained, tmp_path_factory):
  """Two flip-augmented epochs of digits in shards of 600 (3 per epoch)."""
  path = tmp_path_factory.mktemp("cache") / "flip"
  params = [
    f"train.warm_start='{pretrained}'",
    "train.preprocess='flip_lr'",
    "cache_features.epochs=2",
    "cache_features.shard_size=600",
  ]
  result = build(path, *params)
  return path, params, result


def test_cache_holds_backbone_embeddings_and_classifier_logits(augmented, pretrained):
  path, _, result = augmented
  manifest = result["manifest"]
  assert (result["written"], result["skipped"]) == (6, 0)
  assert sorted(x for x in os.listdir(path) if x.endswith(".bin")) == [
    shard_name(e, s) for e in range(2) for s in range(3)
  ]
  ckpt = cache.resolve_checkpoint(pretrained)
  assert manifest["checkpoint"]["path"] == ckpt and manifest["checkpoint"]["step"] == 20
  assert manifest["key"]["preprocess"] == "flip_lr" and manifest["key"]["epochs"] == 2
  assert manifest["key"]["backbone"]["vit"]["width"] == 16 and manifest["complete"]
  assert manifest["format_version"] == 2 and manifest["key"]["dtype"] == "float32"
  record = manifest["layout"]["record_bytes"]
  assert record == (16 + 10) * 4 + 3 * 8  # embedding, logits, label, index, epoch.
  assert os.path.getsize(path / shard_name(1, 2)) == 300 * record  # Shard 2: examples 1200..1499.
  rows = shard_arrays(path / shard_name(1, 2))
  np.testing.assert_array_equal(rows["index"], np.arange(1200, 1500))
  assert set(rows["epoch"]) == {1}

  source = get_source(f"cached:{path}")
  arrays = source.epochs()
  assert arrays["embedding"].shape == (2, 1500, 16) and arrays["logits"].shape == (2, 1500, 10)
  images, labels = get_source("digits").arrays("train")
  np.testing.assert_array_equal(arrays["label"], labels)
  # Independently: the pretrained network (no augmentation) on flipped / unflipped images.
  gin.clear_config()
  config.parse([TINY])
  network = build_network(Deterministic(), 10, (8, 8, 1))
  checkpoints.assign(network.variables, checkpoints.read(ckpt)[0], "model", ckpt)
  adapter, vit = network.get_layer("input_adapter"), network.get_layer("vit")
  x = images.astype(np.float32)
  want = {
    k: vit(adapter(v), training=False).numpy() for k, v in (("plain", x), ("flip", x[:, :, ::-1]))
  }
  logits = {
    "plain": network(x)["logits"].numpy()[:, 0],
    "flip": network(x[:, :, ::-1])["logits"].numpy()[:, 0],
  }
  for e in range(2):
    got = arrays["embedding"][e]
    plain = np.all(np.isclose(got, want["plain"], atol=1e-4), axis=1)
    flip = np.all(np.isclose(got, want["flip"], atol=1e-4), axis=1)
    assert np.all(plain | flip)  # Every cached embedding is one of the two views...
    assert 0.3 < flip.mean() < 0.7  # ...about half of them flipped,
    np.testing.assert_allclose(
      arrays["logits"][e], np.where(plain[:, None], logits["plain"], logits["flip"]), atol=1e-4
    )
  # ...and the two epochs drew different flips (seeded by epoch and example).
  assert not np.allclose(arrays["embedding"][0], arrays["embedding"][1])


def test_rerun_is_a_noop_and_a_stale_config_is_refused_with_the_cache_intact(augmented):
  path, params, _ = augmented
  before = {x: os.path.getmtime(path / x) for x in os.listdir(path)}
  again = build(path, *params)
  assert (again["written"], again["skipped"]) == (0, 6)
  with pytest.raises(cache.StaleCacheError) as err:
    build(path, *params, "cache_features.epochs=3", "vit.width=32")
  msg = str(err.value)
  assert "epochs: cached 2, now 3" in msg and "backbone.vit.width: cached 16, now 32" in msg
  assert "new --workdir" in msg and "--overwrite" in msg and "untouched" in msg
  assert sorted(os.listdir(path)) == sorted(before)
  for name in before:
    if name.endswith(".bin"):
      assert os.path.getmtime(path / name) == before[name]
  assert get_source(f"cached:{path}").manifest["key"]["epochs"] == 2


def test_the_command_line_refuses_a_stale_cache(augmented):
  path, params, _ = augmented
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "keras_unc",
      "cache",
      f"--gin_file={TINY}",
      f"--workdir={path}",
      *[f"--gin_param={p}" for p in params],
      "--gin_param=train.preprocess=''",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr
  assert "preprocess: cached 'flip_lr', now ''" in proc.stderr and "--overwrite" in proc.stderr


def test_resume_after_a_killed_writer(augmented, tmp_path):
  path, params, _ = augmented
  copy = tmp_path / "copy"
  copy.mkdir()
  for name in os.listdir(path):
    copy.joinpath(name).write_bytes(path.joinpath(name).read_bytes())
  # A writer killed while writing epoch 1, shard 2: no final file, a partial tmp file.
  lost = shard_name(1, 2)
  os.remove(copy / lost)
  copy.joinpath(f"{lost}.tmp-4242").write_bytes(b"partial")
  with pytest.raises(ValueError, match="incomplete.*Rerun the same"):
    CachedSource.open(str(copy))
  result = build(copy, *params)
  assert (result["written"], result["skipped"]) == (1, 5)
  assert not [x for x in os.listdir(copy) if ".tmp" in x]
  redone, original = shard_arrays(copy / lost), shard_arrays(path / lost)
  assert redone.keys() == original.keys()
  for k in original:  # Augmentations are seeded by (seed, epoch, example): same shard.
    np.testing.assert_allclose(redone[k], original[k], atol=1e-6, err_msg=k)


def test_bad_cache_configs_are_refused(pretrained, tmp_path):
  base = [f"train.warm_start='{pretrained}'"]
  with pytest.raises(ValueError, match="batch-level ops"):
    build(tmp_path / "a", *base, "train.preprocess='mixup(0.2)'")
  with pytest.raises(ValueError, match="No checkpoint to cache"):
    build(tmp_path / "b")
  with pytest.raises(FileNotFoundError, match="No feature cache"):
    get_source(f"cached:{tmp_path / 'nothing'}")


def test_each_block_of_epochs_visits_every_cached_epoch_once():
  picks = [int(choose_epoch(3, t, 4)) for t in range(12)]
  for block in range(3):
    assert sorted(picks[4 * block : 4 * block + 4]) == [0, 1, 2, 3]
  assert picks == [int(choose_epoch(3, t, 4)) for t in range(12)]  # Deterministic.
  assert picks != [int(choose_epoch(4, t, 4)) for t in range(12)]  # Depends on the seed.


@pytest.mark.parametrize("in_memory", [False, True])
def test_training_stream_reads_the_chosen_epoch(augmented, in_memory):
  path, _, _ = augmented
  gin.bind_parameter("cached_source.in_memory", in_memory)
  source = get_source(f"cached:{path}")
  assert isinstance(source, InMemoryCachedSource) == in_memory
  assert source.random_access == in_memory and source.streams_epochs == (not in_memory)
  arrays = source.epochs()
  rows = [{r.tobytes(): i for i, r in enumerate(e)} for e in arrays["embedding"]]
  ds = make_dataset(source, "train", "", 500, train=True, seed=5)
  for epoch, batch in zip([0, 0, 0, 1, 1, 1], ds.take(6)):  # 1500 examples per epoch.
    emb, labels = (t.numpy() for t in batch)
    chosen = int(choose_epoch(5, epoch, 2))
    found = [rows[chosen].get(r.tobytes()) for r in emb]
    assert None not in found  # Every row is an embedding of the chosen cached epoch...
    np.testing.assert_array_equal(labels, arrays["label"][found])  # ...with its label,
    assert sum(rows[1 - chosen].get(r.tobytes()) is None for r in emb) > 100  # not the other.


def test_cached_training_matches_training_through_the_frozen_backbone(pretrained, tmp_path):
  """In memory, the cache gives the frozen-backbone run's head (same permutations); streamed,
  it reads the same examples in another order: metrics within `STREAMED_TOL` (300 steps)."""
  ckpt = cache.resolve_checkpoint(pretrained)
  common = QUIET + [
    f"train.warm_start='{ckpt}'",
    "train.total_steps=30",
    "train.seed=3",
    "Deterministic.head_init='glorot_uniform'",
  ]
  evaluate = ["train.evaluators=[@ClassificationEvaluator()]"]
  reference = run_inprocess(
    tmp_path / "frozen",
    params=common
    + evaluate
    + ["build_network.freeze_backbone=True", "train.adapt_checkpoint=True"],
  )
  frozen = reference["network"]
  build(tmp_path / "cache", *common)
  cached = common + evaluate + [f"train.dataset='cached:{tmp_path / 'cache'}'"]
  result = run_inprocess(
    tmp_path / "cached",
    params=cached + ["cached_source.in_memory=True", "train.export_at_end=True"],
  )
  longer = [f"train.{k}=300" for k in ("total_steps", "eval_every", "checkpoint_every")]
  streamed = run_inprocess(tmp_path / "streamed", params=cached + longer)["metrics"]
  in_memory = run_inprocess(
    tmp_path / "memory", params=cached + longer + ["cached_source.in_memory=True"]
  )["metrics"]
  full = result["network"]
  head = {v.path: v.numpy() for v in full.head_network.variables}
  arrays, meta = checkpoints.read(ckpt)
  start = {p: arrays[f"model/{i:05d}"] for i, (p, _) in enumerate(meta["variables"])}
  assert head and set(head) <= {v.path for v in frozen.variables}
  moved = False
  for v in frozen.variables:
    if v.path in head:
      np.testing.assert_allclose(head[v.path], v.numpy(), atol=2e-5, err_msg=v.path)
      moved |= not np.allclose(v.numpy(), start[v.path])
    else:  # The backbone is the pretrained one in both.
      np.testing.assert_array_equal(_by_path(full, v.path), v.numpy())
      np.testing.assert_array_equal(start[v.path], v.numpy())
  assert moved  # Training changed the head: the comparison is not vacuous.
  # The workdir's checkpoints hold the head alone; the export is the full image model.
  assert (
    0
    < len(
      checkpoints.read(os.path.join(tmp_path / "cached", "checkpoints", "ckpt-000000030"))[1][
        "variables"
      ]
    )
    < 5
  )
  served = tf.saved_model.load(result["export"]).signatures["serving_default"]
  images = get_source("digits").arrays("test")[0][:16]
  np.testing.assert_allclose(
    served(images=tf.constant(images))["probs"].numpy(),
    full(images.astype(np.float32))["probs"].numpy(),
    atol=1e-5,
  )
  # Evaluated on images by the full network: the same metrics as the frozen-backbone run.
  assert result["metrics"].keys() == reference["metrics"].keys()
  assert any(k.endswith("/accuracy") for k in result["metrics"])
  for k, v in reference["metrics"].items():
    assert result["metrics"][k] == pytest.approx(v, abs=1e-4), k
  # Streamed: the same steps over a differently shuffled stream of the same cache.
  assert streamed.keys() == in_memory.keys() == reference["metrics"].keys()
  for k, tol in STREAMED_TOL.items():
    name = next(x for x in streamed if x.endswith(f"/{k}"))
    assert streamed[name] == pytest.approx(in_memory[name], abs=tol), name
  assert streamed != in_memory  # Another order, really.


def _by_path(network, path):
  return next(v.numpy() for v in network.variables if v.path == path)


def test_cached_training_refuses_new_augmentations_and_another_backbone(pretrained, tmp_path):
  common = QUIET + [f"train.warm_start='{pretrained}'", "train.total_steps=2"]
  build(tmp_path / "cache", *common)
  cached = f"train.dataset='cached:{tmp_path / 'cache'}'"
  with pytest.raises(cache.StaleCacheError, match="preprocessed with ''"):
    run_inprocess(tmp_path / "a", params=common + [cached, "train.preprocess='flip_lr'"])
  with pytest.raises(cache.StaleCacheError, match="vit.depth: cached 1, now 2"):
    run_inprocess(tmp_path / "b", params=common + [cached, "vit.depth=2"])


def test_overwrite_rebuilds_a_stale_cache(pretrained, tmp_path):
  base = [f"train.warm_start='{pretrained}'", "cache_features.shard_size=1500"]
  build(tmp_path / "c", *base)
  (tmp_path / "c" / "notes.txt").write_text("a user's file")
  result = build(tmp_path / "c", *base, "cache_features.epochs=2", overwrite=True)
  assert (result["written"], result["skipped"]) == (2, 0)
  assert get_source(f"cached:{tmp_path / 'c'}").epochs()["embedding"].shape == (2, 1500, 16)
  assert (tmp_path / "c" / "notes.txt").exists()  # Only the cache's own files are deleted.


def test_a_cache_reads_whole_by_its_own_split_and_flags_fitted_images(pretrained, tmp_path, caplog):
  base = [f"train.warm_start='{pretrained}'", "cache_features.shard_size=500"]
  # The backbone trained on all of digits/train: caching a part of it is flagged.
  with caplog.at_level(logging.WARNING, logger="keras_unc.training.feature_cache"):
    part = build(tmp_path / "part", *base, "train.split='train[1000:]'")
  assert part["manifest"]["fitted_examples"] == 500
  assert "held-out split" in caplog.text
  source = get_source(f"cached:{tmp_path / 'part'}")
  # The split the cache was built from is all of it (one gin file caches and trains)...
  assert source.num_examples("train[1000:]") == source.num_examples("train") == 500
  assert source.num_examples("train[:100]") == 100  # ...other slices are relative to it.
  emb, labels = source.arrays("train[1000:]")
  np.testing.assert_array_equal(labels, get_source("digits").arrays("train[1000:]")[1])
  np.testing.assert_array_equal(emb, source.arrays("train")[0])
  assert source.arrays("train[:100]")[0].shape == (100, 16)
  # A split the backbone never trained on is not flagged.
  assert build(tmp_path / "held", *base, "train.split='test'")["manifest"]["fitted_examples"] == 0


# ------------------------------------------------------------------ format v2, replicas, streaming


@pytest.fixture(scope="module")
def two_replicas(augmented, tmp_path_factory):
  """`augmented` built again by a MirroredStrategy over the two logical CPUs (conftest)."""
  path, params, _ = augmented
  copy = tmp_path_factory.mktemp("cache") / "mirrored"
  with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
    result = build(copy, *params)
  return copy, result


def test_two_replicas_write_their_own_shards_with_the_same_values(augmented, two_replicas):
  path, _, _ = augmented
  copy, result = two_replicas
  assert (result["written"], result["skipped"]) == (6, 0)
  names = sorted(x for x in os.listdir(copy) if x.endswith(".bin"))
  # The 3 shards of each epoch are dealt to the replicas: 0, 1, 0.
  assert names == [shard_name(e, s, s % 2) for e in range(2) for s in range(3)]
  for e in range(2):
    for s in range(3):
      one, two = shard_arrays(path / shard_name(e, s)), shard_arrays(copy / shard_name(e, s, s % 2))
      for k in one:  # Same (seed, epoch, example) -> same augmentation and embedding.
        np.testing.assert_allclose(two[k], one[k], atol=1e-5, err_msg=f"{e} {s} {k}")


def test_float16_cache_rounds_the_float32_one(augmented, tmp_path):
  path, params, _ = augmented
  half = build(
    tmp_path / "half", *params, "cache_features.epochs=1", "cache_features.dtype='float16'"
  )
  assert half["manifest"]["layout"]["record_bytes"] == (16 + 10) * 2 + 3 * 8
  full = get_source(f"cached:{path}")
  source = get_source(f"cached:{tmp_path / 'half'}")
  want = full.read(0, 0, 1500)
  got = source.read(0, 0, 1500)
  assert got["embedding"].dtype == np.float32
  for k in ("embedding", "logits"):
    np.testing.assert_allclose(got[k], want[k].astype(np.float16).astype(np.float32), atol=2e-3)
    assert np.any(got[k] != want[k])  # Really stored in half precision.
  streamed = next(iter(source.load("train").batch(1500)))
  np.testing.assert_array_equal(streamed["embedding"].numpy(), got["embedding"])
  np.testing.assert_array_equal(streamed["label"].numpy(), got["label"])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_format_round_trip(tmp_path, dtype):
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(2, 50, 6)).astype(np.float32)
  logits = rng.normal(size=(2, 50, 3)).astype(np.float32)
  labels = rng.integers(0, 3, 50)

  def arrays(e, start, stop):
    return {
      "embedding": emb[e, start:stop],
      "logits": logits[e, start:stop],
      "label": labels[start:stop],
    }

  write_cache(
    str(tmp_path),
    arrays,
    num_examples=50,
    embedding_dim=6,
    num_classes=3,
    epochs=2,
    shard_size=16,
    dtype=dtype,
  )
  source = get_source(f"cached:{tmp_path}")
  assert len(source.shards) == 2 * 4 and source.image_shape == (6,)
  stored = lambda x: x.astype(dtype).astype(np.float32)
  np.testing.assert_array_equal(source.epochs()["embedding"], stored(emb))
  np.testing.assert_array_equal(source.epochs()["logits"], stored(logits))
  x, y = source.arrays("train[10:40]")  # Across shard boundaries.
  np.testing.assert_array_equal(x, stored(emb[0, 10:40]))
  np.testing.assert_array_equal(y, labels[10:40])
  b = next(iter(source.load("train[10:40]", epoch=1).batch(100)))
  np.testing.assert_array_equal(b["embedding"].numpy(), stored(emb[1, 10:40]))
  np.testing.assert_array_equal(b["logits"].numpy(), stored(logits[1, 10:40]))
  np.testing.assert_array_equal(b["label"].numpy(), labels[10:40])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  """3 cached epochs of 90 examples (embedding = [epoch, index]) in shards of 16."""
  path = tmp_path_factory.mktemp("synthetic")

  def arrays(e, start, stop):
    i = np.arange(start, stop)
    emb = np.stack([np.full(len(i), e), i], 1).astype(np.float32)
    return {"embedding": emb, "logits": np.zeros((len(i), 2)), "label": i % 2}

  write_cache(
    str(path), arrays, num_examples=90, embedding_dim=2, num_classes=2, epochs=3, shard_size=16
  )
  return get_source(f"cached:{path}")


def _stream(source, start, pipelines=None, take=8, seed=4):
  ctx = pipelines and tf.distribute.InputContext(
    num_input_pipelines=pipelines[0], input_pipeline_id=pipelines[1], num_replicas_in_sync=2
  )
  ds = make_dataset(
    source,
    "train",
    "",
    10,
    train=True,
    seed=seed,
    start_step=start,
    input_context=ctx,
    shuffle_buffer=20,
  )
  return [x.numpy() for x, _ in ds.take(take)]


def test_streamed_epochs_read_the_chosen_epoch_shuffled_and_resume_exactly(synthetic):
  stream = np.concatenate(_stream(synthetic, 0, take=27))  # 3 epochs of 90.
  for t in range(3):
    epoch = stream[90 * t : 90 * (t + 1)]
    assert set(epoch[:, 0]) == {int(choose_epoch(4, t, 3))}  # One cached epoch per epoch...
    assert sorted(epoch[:, 1]) == list(range(90))  # ...each example once,
    assert list(epoch[:, 1]) != sorted(epoch[:, 1])  # shuffled,
  assert list(stream[:90, 1]) != list(stream[90:180, 1])  # differently every epoch.
  assert sorted(stream[::90, 0]) == [0, 1, 2]
  for start in (3, 8, 9, 17):  # Inside an epoch, at and across boundaries (9 steps/epoch).
    for a, b in zip(_stream(synthetic, start, take=4), stream.reshape(-1, 10, 2)[start:]):
      np.testing.assert_array_equal(a, b)
  assert not np.array_equal(_stream(synthetic, 0, take=1, seed=5)[0], stream[:10])


def test_streamed_input_pipelines_are_disjoint_and_resume(synthetic):
  # Two pipelines of per-replica batch 5: each owns 45 examples, 9 steps per epoch.
  shares = [np.concatenate(_stream(synthetic, 0, (2, p), take=9)) for p in range(2)]
  assert sorted(np.concatenate(shares)[:, 1]) == list(range(90))
  for p in range(2):
    again = _stream(synthetic, 7, (2, p), take=4)
    full = np.concatenate(_stream(synthetic, 0, (2, p), take=11)).reshape(-1, 5, 2)
    for a, b in zip(again, full[7:]):
      np.testing.assert_array_equal(a, b)


def test_streaming_memory_is_bounded_by_the_buffer_not_the_cache(synthetic):
  """Nothing E x N x D: the streamed source never loads the arrays."""
  _stream(synthetic, 0, take=12)
  next(iter(synthetic.load("train")))
  assert not hasattr(synthetic, "_arrays")


def test_old_incomplete_and_misconfigured_caches_are_refused_untouched(augmented, tmp_path):
  path, params, _ = augmented
  copy = tmp_path / "copy"
  shutil.copytree(path, copy)
  # Version 1 (the `.npz` format): refused as a source and by the builder, nothing deleted.
  manifest = json.loads((copy / "manifest.json").read_text())
  old = dict(manifest, format_version=1, key=dict(manifest["key"], format_version=1))
  (copy / "manifest.json").write_text(json.dumps(old))
  before = snapshot(copy)
  with pytest.raises(ValueError, match=r"format version 1.*reads 2: rebuild it \(`--overwrite`\)"):
    get_source(f"cached:{copy}")
  with pytest.raises(
    cache.StaleCacheError, match="(?s)format_version: cached 1, now 2.*--overwrite"
  ):
    build(copy, *params)
  assert snapshot(copy) == before
  # An unknown dtype: refused before anything is read or written.
  (copy / "manifest.json").write_text(json.dumps(manifest))
  before = snapshot(copy)
  with pytest.raises(ValueError, match="Unknown feature cache dtype 'float64'.*float16"):
    build(copy, *params, "cache_features.dtype='float64'")
  assert snapshot(copy) == before
  # Incomplete: refused as a source (with the command that finishes it), nothing deleted.
  os.remove(copy / shard_name(0, 1))
  before = snapshot(copy)
  with pytest.raises(ValueError, match="incomplete: 1 shards missing.*epoch 0 shard 1"):
    get_source(f"cached:{copy}")
  assert snapshot(copy) == before
