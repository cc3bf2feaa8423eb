"""Feature cache (`python -m keras_unc cache`) and the `cached:` source on the tiny digits config."""

import logging
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from keras_unc import config
from keras_unc.data import get_source, make_dataset
from keras_unc.data.cached import CachedSource, choose_epoch, shard_name
from keras_unc.methods import Deterministic
from keras_unc.runtime import checkpoints
from keras_unc.training import feature_cache as cache
from keras_unc.training.network import build_network
from tests.e2e.helpers import REPO, TINY, run_inprocess

QUIET = ["train.evaluators=[]", "train.export_at_end=False"]


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
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


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
  assert sorted(x for x in os.listdir(path) if x.endswith(".npz")) == [
    shard_name(e, s) for e in range(2) for s in range(3)
  ]
  ckpt = cache.resolve_checkpoint(pretrained)
  assert manifest["checkpoint"]["path"] == ckpt and manifest["checkpoint"]["step"] == 20
  assert manifest["key"]["preprocess"] == "flip_lr" and manifest["key"]["epochs"] == 2
  assert manifest["key"]["backbone"]["vit"]["width"] == 16 and manifest["complete"]

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
    if name.endswith(".npz"):
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


def test_training_stream_reads_the_chosen_epoch(augmented):
  path, _, _ = augmented
  source = get_source(f"cached:{path}")
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
  result = run_inprocess(
    tmp_path / "cached",
    params=common
    + evaluate
    + [f"train.dataset='cached:{tmp_path / 'cache'}'", "train.export_at_end=True"],
  )
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
