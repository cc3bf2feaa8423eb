"""The TPU and multi-worker code paths, as far as a machine without a TPU allows."""

import os
import subprocess
import sys
import types

import gin
import pytest
import tensorflow as tf

from keras_unc import config
from keras_unc.runtime import distribute, preemption
from tests.e2e.helpers import REPO, main_command


def test_auto_picks_tpu_when_an_address_is_given():
  # `auto` + a TPU address goes to the TPU path (and fails clearly here: no TPU).
  with pytest.raises(RuntimeError, match=r"No TPU found \(tpu='my-tpu'\).*--tpu=NAME"):
    distribute.get_strategy("auto", tpu="my-tpu")


def test_tpu_selected_from_gin_fails_with_the_fix():
  config.parse([], ["get_strategy.name = 'tpu'", "get_strategy.tpu = 'local'"])
  with pytest.raises(RuntimeError) as e:
    distribute.get_strategy()
  message = str(e.value)
  assert "No TPU found (tpu='local')" in message
  assert "Cloud TPU VM with --tpu=local" in message  # The fix...
  assert "--strategy=auto" in message  # ... or the alternative,
  assert "Cause:" in message  # and TensorFlow's own reason.


def test_main_flags_select_tpu(tmp_path):
  """`--strategy=tpu --tpu=local` reach get_strategy; nothing is written without a TPU."""
  proc = subprocess.run(
    main_command(tmp_path / "w", "--strategy=tpu", "--tpu=local"),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0
  assert "No TPU found (tpu='local')" in proc.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_bucket_workdir_is_refused_with_the_fix(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "keras_unc.main",
      "--workdir=gs://bucket/run",
      "--gin_file=testing/tiny.gin",
    ],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=120,
    env=dict(os.environ, PYTHONPATH=REPO),
  )
  assert proc.returncode == 2
  assert "is not a local folder" in proc.stderr and "launch/tpu_vm.sh" in proc.stderr
  assert not (tmp_path / "gs:").exists()  # os.makedirs would have made a local "gs:" folder.


def test_unknown_strategy_names_the_choices():
  with pytest.raises(ValueError, match="auto, one_device, mirrored, multi_worker, tpu"):
    distribute.get_strategy("tpu_v4")


def _worker(task_type, task_id, chief):
  """A stand-in for a MultiWorkerMirroredStrategy seen from one task."""
  return types.SimpleNamespace(
    cluster_resolver=types.SimpleNamespace(task_type=task_type, task_id=task_id),
    extended=types.SimpleNamespace(should_checkpoint=chief),
  )


def test_single_process_strategies_are_chief_and_write_the_workdir(tmp_path):
  for strategy in (tf.distribute.get_strategy(), distribute.get_strategy("mirrored")):
    assert distribute.is_chief(strategy)
    assert distribute.task(strategy) == (None, 0)
    assert distribute.worker_dir(str(tmp_path), strategy) == str(tmp_path)
    assert distribute.sync_from_chief(strategy, [], 7) == 7  # No-op outside a cluster.


def test_non_chief_worker_writes_a_private_scratch_folder(tmp_path):
  strategy = _worker("worker", 1, chief=False)
  assert distribute.task(strategy) == ("worker", 1)
  scratch = distribute.worker_dir(str(tmp_path), strategy)
  assert scratch != str(tmp_path) and os.path.isdir(scratch)
  assert not os.path.commonpath([scratch, str(tmp_path)]) == str(tmp_path)
  assert distribute.worker_dir(str(tmp_path), _worker("worker", 0, chief=True)) == str(tmp_path)


def test_preemption_branch_per_strategy():
  single = preemption.install(tf.distribute.get_strategy(), None, None)
  assert [type(c) for c in single] == [preemption.SigtermCheckpoint]
  cluster = preemption.install(_worker("worker", 1, chief=False), None, None)
  assert [type(c) for c in cluster] == [preemption.ClusterPreemptionCheckpoint]


@pytest.fixture(autouse=True)
def _reset_gin():
  yield
  gin.clear_config()
