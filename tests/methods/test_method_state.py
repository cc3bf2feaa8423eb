"""Method state across steps and checkpoints: GP precision resets, adaptation between
methods, and refusing a checkpoint of another method."""

import types

import numpy as np
import pytest

from keras_unc.methods.heads import _Resets
from keras_unc.runtime import checkpoints
from tests.e2e.helpers import run_inprocess

SHORT = [
  "train.total_steps = 4",
  "train.eval_every = 4",
  "train.checkpoint_every = 4",
  "train.evaluators = []",
  "train.export_at_end = False",
]


class _FakeGP:
  def __init__(self):
    self.resets = 0

  def reset_covariance(self):
    self.resets += 1


def _reset_steps(start, stop, every):
  gp = _FakeGP()
  cb = _Resets([gp], every)
  it = types.SimpleNamespace(value=start)
  cb.set_model(
    types.SimpleNamespace(
      optimizer=types.SimpleNamespace(iterations=types.SimpleNamespace(numpy=lambda: it.value))
    )
  )
  steps = []
  for step in range(start, stop):
    it.value = step
    before = gp.resets
    cb.on_train_batch_begin(0)
    if gp.resets > before:
      steps.append(step)
  return steps


def test_precision_resets_at_each_epoch_start_and_resume_matches():
  assert _reset_steps(0, 10, 4) == [0, 4, 8]
  assert _reset_steps(6, 10, 4) == [8]  # Resumed mid-epoch: the checkpoint holds P.
  # The checkpoint of step 4 was written before step 4's reset: it must happen on resume.
  assert _reset_steps(4, 10, 4) == [4, 8]


def test_checkpoint_of_another_method_is_refused_then_adapted(tmp_path):
  det = tmp_path / "det"
  run_inprocess(det, "train", params=SHORT)
  source = checkpoints.Checkpointer(str(det / "checkpoints")).path(4)

  # Resuming a workdir written by another method names both methods and the fix.
  with pytest.raises(
    checkpoints.CheckpointMismatchError,
    match="written by method 'deterministic', but this run builds method "
    "'batchensemble'.*fresh --workdir",
  ):
    run_inprocess(
      det,
      "train",
      params=SHORT
      + [
        "train.method = @BatchEnsemble()",
        "BatchEnsemble.ensemble_size = 2",
        "train.total_steps = 8",
      ],
    )
  # Warm start without the adaptation option: refused, pointing at the option.
  with pytest.raises(checkpoints.CheckpointMismatchError, match="adapt_checkpoint=True"):
    run_inprocess(
      tmp_path / "be",
      "train",
      params=SHORT
      + [
        "train.method = @BatchEnsemble()",
        "BatchEnsemble.ensemble_size = 2",
        f"train.warm_start = '{source}'",
      ],
    )

  # With adaptation the shared kernels are copied and per-member biases broadcast.
  arrays, meta = checkpoints.read(source)
  result = run_inprocess(
    tmp_path / "be2",
    "eval",
    params=SHORT
    + [
      "train.method = @BatchEnsemble()",
      "BatchEnsemble.ensemble_size = 2",
      f"train.warm_start = '{source}'",
      "train.adapt_checkpoint = True",
    ],
  )
  net = result["network"]
  stored = {path: arrays[f"model/{i:05d}"] for i, (path, _) in enumerate(meta["variables"])}
  dense = net.get_layer("vit").get_layer("block0_mlp_dense_1")
  kernel = [v for p, v in stored.items() if p.endswith("block0_mlp_dense_1/kernel")][0]
  bias = [v for p, v in stored.items() if p.endswith("block0_mlp_dense_1/bias")][0]
  np.testing.assert_array_equal(np.asarray(dense.kernel), kernel)
  np.testing.assert_array_equal(np.asarray(dense.bias), np.stack([bias, bias]))
  assert not np.allclose(np.asarray(dense.alpha), 1.0)  # Fast weights freshly initialised.


def test_batch_not_divisible_by_what_the_method_needs(tmp_path):
  from keras_unc import config, methods
  from keras_unc.training import trainer as train_lib

  class Paired(methods.Deterministic):
    batch_multiple = 2  # E.g. a loss that pairs examples (2k, 2k+1).

  config.parse(["testing/tiny.gin"], ["train.batch_size = 31"])
  with pytest.raises(
    ValueError,
    match="Global batch size 31 is not divisible by 2 .*method 'deterministic'.*multiple of 2",
  ):
    train_lib.train(str(tmp_path), method=Paired())
  assert not (tmp_path / "checkpoints").exists()  # Refused before anything was written.
