"""Checkpointer: atomic writes, keep-last-K, fallback past corruption, clear mismatches."""

import os

import keras
import numpy as np
import pytest

from keras_unc.runtime import checkpoints


def _model(units=3):
  inp = keras.Input((4,))
  return keras.Model(inp, keras.layers.Dense(units)(keras.layers.Dropout(0.5, seed=1)(inp)))


def _opt(model):
  opt = keras.optimizers.AdamW(1e-3)
  opt.build(model.trainable_variables)
  return opt


def test_save_restore_roundtrip_and_keep_last(tmp_path):
  model = _model()
  opt = _opt(model)
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=2)
  for step in (1, 2, 3):
    model.layers[-1].kernel.assign(np.full((4, 3), step, "float32"))
    ckpt.save(step, model, opt)
  assert ckpt.steps() == [3, 2]
  other = _model()
  other_opt = _opt(other)
  step, arrays, meta = ckpt.load_latest()
  checkpoints.restore(other, other_opt, arrays, "x")
  assert step == 3 and meta["step"] == 3
  np.testing.assert_array_equal(other.layers[-1].kernel.numpy(), 3.0)
  # The dropout seed-generator state travels with the weights.
  assert any("seed_generator" in path for path, _ in meta["variables"])


def test_stale_temporary_folder_is_removed(tmp_path):
  (tmp_path / "ckpt-000000005.tmp-123").mkdir()
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  assert ckpt.steps() == [] and not os.listdir(tmp_path)


def test_corrupt_newest_falls_back_and_is_kept(tmp_path, caplog):
  model = _model()
  opt = _opt(model)
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  ckpt.save(1, model, opt)
  ckpt.save(2, model, opt)
  (tmp_path / "ckpt-000000002" / "meta.json").write_text("{broken")
  step, _, _ = ckpt.load_latest()
  assert step == 1
  assert "ckpt-000000002 is unreadable" in caplog.text and "falling back" in caplog.text
  assert (tmp_path / "ckpt-000000002").exists()


def test_mismatched_model_is_refused_clearly(tmp_path):
  model = _model(3)
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  ckpt.save(1, model, _opt(model))
  _, arrays, _ = ckpt.load_latest()
  wrong = _model(5)
  before = wrong.layers[-1].kernel.numpy().copy()
  with pytest.raises(checkpoints.CheckpointMismatchError, match=r"shape \(4, 3\).*\(4, 5\)"):
    checkpoints.restore(wrong, None, arrays, "ckpt")
  np.testing.assert_array_equal(wrong.layers[-1].kernel.numpy(), before)  # Untouched.
  inp = keras.Input((4,))
  deeper = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Dense(4)(inp)))
  with pytest.raises(checkpoints.CheckpointMismatchError, match="different model or method"):
    checkpoints.restore(deeper, None, arrays, "ckpt")
