"""Disk full / unwritable workdir while saving: the previous checkpoint stays valid, the
temporary folder is cleaned up, and the error says where, why and what to do."""

import errno
import os
import stat

import keras
import numpy as np
import pytest

from keras_unc.runtime import checkpoints


def _model_and_opt():
  inp = keras.Input((4,))
  model = keras.Model(inp, keras.layers.Dense(3)(inp))
  opt = keras.optimizers.AdamW(1e-3)
  opt.build(model.trainable_variables)
  return model, opt


@pytest.fixture
def saved_once(tmp_path):
  model, opt = _model_and_opt()
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=3)
  ckpt.save(10, model, opt)
  before = {k: v.copy() for k, v in checkpoints.read(ckpt.path(10))[0].items()}
  model.layers[-1].kernel.assign(np.ones((4, 3), "float32"))  # New weights to save.
  return ckpt, model, opt, before


def _assert_previous_intact(ckpt, before):
  assert ckpt.steps() == [10]
  assert sorted(os.listdir(ckpt.directory)) == ["ckpt-000000010"]  # No tmp left behind.
  arrays, meta = checkpoints.read(ckpt.path(10))
  assert meta["step"] == 10
  assert all(np.array_equal(arrays[k], before[k]) for k in before)


def test_disk_full_mid_write(saved_once, monkeypatch):
  ckpt, model, opt, before = saved_once

  def savez_fills_disk(f, **arrays):
    f.write(b"PK\x03\x04 half a zip")  # Partial data on disk, then the disk is full.
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(np, "savez", savez_fills_disk)
  with pytest.raises(checkpoints.CheckpointWriteError) as e:
    ckpt.save(20, model, opt)
  msg = str(e.value)
  assert ckpt.path(20) in msg and "disk is full" in msg and "free disk space" in msg
  assert f"previous checkpoint {ckpt.path(10)} is intact" in msg and "rerun" in msg
  assert isinstance(e.value, OSError)
  _assert_previous_intact(ckpt, before)


def test_unwritable_checkpoint_folder(saved_once, monkeypatch):
  ckpt, model, opt, before = saved_once
  if os.geteuid() != 0:  # A real permission error.
    os.chmod(ckpt.directory, stat.S_IRUSR | stat.S_IXUSR)
  else:  # root ignores mode bits: make the folder creation fail as it would.

    def no_permission(path, *args, **kwargs):
      raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(os, "makedirs", no_permission)
  try:
    with pytest.raises(checkpoints.CheckpointWriteError) as e:
      ckpt.save(20, model, opt)
  finally:
    os.chmod(ckpt.directory, stat.S_IRWXU)
  msg = str(e.value)
  assert ckpt.path(20) in msg and "permission denied" in msg
  assert f"make {ckpt.directory} writable" in msg
  monkeypatch.undo()
  _assert_previous_intact(ckpt, before)


def test_kill_while_replacing_same_step_keeps_a_copy(saved_once):
  """A writer killed between setting the old copy aside and renaming the new one in."""
  ckpt, _, _, before = saved_once
  os.rename(ckpt.path(10), ckpt.path(10) + ".tmp-old-12345")
  os.makedirs(ckpt.path(10) + ".tmp-12345")  # The new, possibly incomplete copy.
  reopened = checkpoints.Checkpointer(ckpt.directory)
  _assert_previous_intact(reopened, before)


def test_trainer_disk_full_keeps_last_checkpoint(tmp_path, monkeypatch):
  """Through `train()`: the save at step 20 fails; step 10 stays the newest valid one."""
  from tests.e2e.helpers import run_inprocess

  real_write = checkpoints.Checkpointer._write

  def write(self, tmp, step, *args):
    if step == 20:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
    return real_write(self, tmp, step, *args)

  monkeypatch.setattr(checkpoints.Checkpointer, "_write", write)
  with pytest.raises(checkpoints.CheckpointWriteError, match="ckpt-000000020: the disk is full"):
    run_inprocess(tmp_path, "train", ["train.total_steps=20", "train.checkpoint_every=10"])
  ckpt = checkpoints.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.steps() == [10] and checkpoints.read(ckpt.path(10))[1]["step"] == 10
