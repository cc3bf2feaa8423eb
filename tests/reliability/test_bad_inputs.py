"""The "What happens when…" catalogue: one test per bad input. Each resumes a workdir that
already holds a trained checkpoint (step 10) with the bad input, and asserts that the error
names the problem and the fix and that the checkpoint is byte-for-byte unchanged.

Rows covered elsewhere, at a lower level, are listed in `ELSEWHERE` (kept in sync with the
README table); the rows here go through the trainer itself.
"""

import hashlib
import os
import shutil

import gin
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_unc import config
from keras_unc.data.errors import DataError
from keras_unc.runtime import checkpoints, workdir_lock
from keras_unc.training import trainer as train_lib
from tests.reliability.test_workdir_lock import _holder

ELSEWHERE = {
  "unknown gin binding (CLI exit 2)": "tests/e2e/test_cli.py",
  "unknown configurable / file": "tests/test_config_distribute.py",
  "label out of range, in-memory source": "tests/data/test_sources.py",
  "unknown preprocessing op (op level)": "tests/data/test_ops.py::test_unknown_op",
  "corrupted newest checkpoint": "tests/e2e/test_resume.py",
  "non-finite loss / gradients / parameters": "tests/reliability/test_nan_policy.py",
  "disk full / unwritable workdir": "tests/reliability/test_checkpoint_write_errors.py",
  "SIGKILL / SIGTERM": "tests/reliability/test_fault_injection.py, test_preemption.py",
}
STEPS = ["train.total_steps=20", "train.checkpoint_every=10", "train.eval_every=20"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir whose run was interrupted at step 10 (checkpoint ckpt-10 on disk)."""
  workdir = tmp_path_factory.mktemp("trained")
  _train(workdir, ["train.total_steps=10", "train.checkpoint_every=10"])
  return workdir


@pytest.fixture
def workdir(trained, tmp_path):
  copy = tmp_path / "workdir"
  shutil.copytree(trained, copy, ignore=shutil.ignore_patterns(".lock"))
  return copy


def _train(workdir, params, gin_files=("testing/tiny.gin",)):
  gin.clear_config()
  config.parse(list(gin_files), list(params))
  return train_lib.train(str(workdir), "train")


def _fingerprint(workdir):
  ckpt = os.path.join(workdir, "checkpoints")
  out = {}
  for name in sorted(os.listdir(ckpt)):
    for f in sorted(os.listdir(os.path.join(ckpt, name))):
      with open(os.path.join(ckpt, name, f), "rb") as fh:
        out[f"{name}/{f}"] = hashlib.sha256(fh.read()).hexdigest()
  return out


def _fails_keeping_checkpoint(workdir, error, match, params=(), gin_files=("testing/tiny.gin",)):
  before = _fingerprint(workdir)
  assert list(before) == ["ckpt-000000010/meta.json", "ckpt-000000010/variables.npz"]
  with pytest.raises(error, match=match):
    _train(workdir, STEPS + list(params), gin_files)
  assert _fingerprint(workdir) == before, "a checkpoint was lost or changed"
  step, _, _ = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints")).load_latest()
  assert step == 10


# ------------------------------------------------------------------ data (tfds: sources)


def _png(value):
  return tf.io.encode_png(tf.fill([28, 28, 1], tf.constant(value, tf.uint8))).numpy()


def _mock(dataset_fn):
  return tfds.testing.mock_data(as_dataset_fn=lambda self, *a, **k: dataset_fn())


TFDS = [
  "train.dataset='tfds:mnist'",
  "get_source.skip_decoding=True",
  "train.preprocess='decode(1)'",
]


def test_corrupt_image_bytes(workdir):
  images = [_png(i) for i in range(63)] + [b"\x89PNG\r\n\x1a\n garbage, not an image"]
  ds = lambda: tf.data.Dataset.from_tensor_slices(  # noqa: E731
    {"image": images, "label": np.arange(64) % 10}
  )
  with _mock(ds):
    _fails_keeping_checkpoint(
      workdir,
      DataError,
      r"(?s)tfds:mnist/train: an example's image bytes cannot be "
      r"decoded.*Fix: re-prepare the dataset.*ckpt-000000010.*is intact",
      TFDS,
    )


def test_truncated_tfrecord(workdir, tmp_path):
  path = str(tmp_path / "mnist-train.tfrecord")
  with tf.io.TFRecordWriter(path) as w:
    for i in range(64):
      w.write(
        tf.train.Example(
          features=tf.train.Features(
            feature={
              "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[_png(i)])),
              "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 10])),
            }
          )
        ).SerializeToString()
      )
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) * 2 // 3)  # A copy that stopped two thirds in.
  spec = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
  }
  ds = lambda: (
    tf.data.TFRecordDataset(path)
    .map(  # noqa: E731
      lambda r: tf.io.parse_single_example(r, spec)
    )
    .apply(tf.data.experimental.assert_cardinality(64))
  )
  with _mock(ds):
    _fails_keeping_checkpoint(
      workdir,
      DataError,
      r"(?s)TFRecord file is truncated or corrupted.*Fix: re-prepare"
      r".*copy its files again.*ckpt-000000010.*is intact",
      TFDS,
    )


def test_image_of_wrong_rank(workdir):
  ds = lambda: tf.data.Dataset.from_tensor_slices(  # noqa: E731
    {"image": tf.zeros([64, 28, 28], tf.uint8), "label": np.arange(64) % 10}
  )
  with _mock(ds):
    _fails_keeping_checkpoint(
      workdir,
      ValueError,
      r"tfds:mnist/train have shape \(28, 28\).*expected \[height, "
      r"width, channels\]. Give gray images a channel axis",
      ["train.dataset='tfds:mnist'"],
    )


def test_label_out_of_range(workdir):
  ds = lambda: tf.data.Dataset.from_tensor_slices(  # noqa: E731
    {"image": tf.zeros([64, 28, 28, 1], tf.uint8), "label": np.arange(64) % 10 + 3}
  )
  with _mock(ds):
    _fails_keeping_checkpoint(
      workdir,
      DataError,
      r"(?s)a label is outside \[0, num_classes\).*Fix: check "
      r"get_source.label_key.*label =\] \[1[0-2]\] \[is outside",
      ["train.dataset='tfds:mnist'"],
    )


def test_empty_dataset(workdir):
  _fails_keeping_checkpoint(
    workdir,
    ValueError,
    r"digits/train\[1500:\] is empty \(0 "
    r"examples\): check the split name and slice",
    ["train.split='train[1500:]'"],
  )


# ------------------------------------------------------------------ configuration


def test_unknown_gin_binding(workdir):
  _fails_keeping_checkpoint(
    workdir,
    config.ConfigError,
    r"Unknown gin parameter train.totl_steps. Did you mean: total_steps",
    ["train.totl_steps=20"],
  )


def test_typo_in_preprocessing_op(workdir):
  _fails_keeping_checkpoint(
    workdir,
    ValueError,
    r"Unknown preprocessing op 'flip_rl'.*flip_lr",
    ["train.preprocess='flip_rl'"],
  )


def test_non_finite_learning_rate(workdir):
  _fails_keeping_checkpoint(
    workdir,
    ValueError,
    r"Learning rate must be finite.*got inf: "
    r"fix make_optimizer.learning_rate",
    ["make_optimizer.learning_rate=1e999"],
  )


# ------------------------------------------------------------------ checkpoints / workdir


def test_wrong_shape_checkpoint(workdir):
  _fails_keeping_checkpoint(
    workdir,
    checkpoints.CheckpointMismatchError,
    r"shape .* in the checkpoint but .* in the model.*Use a fresh "
    r"--workdir, or the matching gin config",
    ["vit.width=24"],
  )


def test_checkpoint_from_another_method(workdir):
  _fails_keeping_checkpoint(
    workdir,
    checkpoints.CheckpointMismatchError,
    r"written by method 'deterministic', but this run builds method 'mc_dropout'.*fresh "
    r"--workdir.*adapt_checkpoint=True",
    ["MCDropout.num_samples=2"],
    gin_files=("testing/tiny.gin", "methods/mc_dropout.gin"),
  )


def test_workdir_owned_by_another_run(workdir):
  proc = _holder(workdir)
  try:
    _fails_keeping_checkpoint(
      workdir,
      workdir_lock.WorkdirLockedError,
      rf"Workdir {workdir} is in use by another run \(pid {proc.pid} on host .*Wait for "
      r"that run to finish or stop it.*or choose another --workdir",
    )
  finally:
    proc.kill()
    proc.wait()
  _train(workdir, STEPS)  # Once the owner is gone, the same command resumes and finishes.
  assert checkpoints.Checkpointer(os.path.join(workdir, "checkpoints")).steps()[0] == 20
