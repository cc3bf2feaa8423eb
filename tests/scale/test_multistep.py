"""`train.steps_per_execution = N`: N replica steps per host call under MirroredStrategy (two
logical CPUs, `tests/conftest.py`) equal N single steps bit for bit, with a skipped non-finite
batch inside an execution; a SIGTERM save between two checkpoints resumes bit-identically;
`nan_policy="stop"` names the exact bad step inside an execution and keeps the last good
checkpoint."""

import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_unc import config
from keras_unc.methods import Deterministic
from keras_unc.runtime import checkpoints, preemption
from keras_unc.training import callbacks as cbs
from keras_unc.training import trainer as train_lib
from tests.e2e.helpers import TINY
from tests.reliability.test_preemption import _SigtermAt

# Epochs of 10 steps run as executions of 4, 4 and 2 steps: the cut at the epoch end (where
# checkpoints are written) is exercised.
N = 4
BAD = 13  # The step (1-based) whose loss is infinite: inside the execution of steps 11-14.
PARAMS = [
  "train.total_steps=20",
  "train.checkpoint_every=10",
  "train.eval_every=20",
  "train.log_every=5",
  "train.evaluators=[]",
  "train.export_at_end=False",
  "get_strategy.name='mirrored'",
]


class _NanLossAt(Deterministic):
  """The deterministic loss, infinite at train step `at` (read from `optimizer.iterations`,
  so a resumed run meets it at the same step)."""

  def __init__(self, at):
    super().__init__()
    self.at, self.iterations = at, None

  def callbacks(self):
    method = self

    class Arm(keras.callbacks.Callback):
      def on_train_begin(self, logs=None):  # Before the train function is traced.
        method.iterations = self.model.optimizer.iterations

    return [*super().callbacks(), Arm()]

  def loss(self, labels, outputs):
    loss = super().loss(labels, outputs)
    if self.iterations is None:  # Keras' symbolic build.
      return loss
    bad = tf.equal(tf.cast(self.iterations, tf.int64) + 1, self.at)
    return loss / tf.where(bad, 0.0, 1.0)


class _AtEnd(keras.callbacks.Callback):
  """Records the step and the skipped-batch count when `fit` ends."""

  def on_train_end(self, logs=None):
    self.step = int(self.model.optimizer.iterations.numpy())
    self.skipped = int(self.model.skipped_batches.numpy())


def _train(workdir, steps_per_execution, policy="skip_batch", callbacks=()):
  gin.clear_config()
  params = [f"train.steps_per_execution={steps_per_execution}", f"train.nan_policy='{policy}'"]
  config.parse([TINY], PARAMS + params)
  return train_lib.train(
    str(workdir), "train", method=_NanLossAt(BAD), callbacks=[_AtEnd(), *callbacks]
  )


def _checkpoints(workdir):
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
  return {step: checkpoints.read(ckpt.path(step))[0] for step in ckpt.steps()}


def _logged_losses(workdir):
  found = {}
  for name in os.listdir(workdir / "train"):
    for event in tf.compat.v1.train.summary_iterator(str(workdir / "train" / name)):
      for value in event.summary.value:
        if value.tag == "train/loss":
          found[event.step] = float(tf.make_ndarray(value.tensor))
  return found


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for step in a:
    assert a[step].keys() == b[step].keys()
    for key in a[step]:  # Model and optimizer state, bit for bit.
      np.testing.assert_array_equal(a[step][key], b[step][key], err_msg=f"{step} {key}")


@pytest.fixture(scope="module")
def single_steps(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("single")
  _train(workdir, 1)
  return workdir


def test_multistep_equals_single_steps(single_steps, tmp_path):
  end = _AtEnd()
  _train(tmp_path, N, callbacks=[end])
  assert end.step == 20 and end.skipped == 1  # The bad step inside an execution skipped.
  single, multi = _checkpoints(single_steps), _checkpoints(tmp_path)
  assert sorted(multi) == [10, 20]  # At the epoch ends: the executions were cut there.
  _assert_same(single, multi)
  assert not np.array_equal(single[10]["model/00000"], single[20]["model/00000"])  # Trained.
  # Logged at the end of the executions that reach or pass a multiple of log_every = 5.
  logged, single_logged = _logged_losses(tmp_path), _logged_losses(single_steps)
  assert sorted(logged) == [8, 10, 18, 20] and sorted(single_logged) == [5, 10, 15, 20]
  assert logged[10] == single_logged[10] and logged[20] == single_logged[20]


def test_multistep_sigterm_resume_equals_uninterrupted(single_steps, tmp_path):
  # SIGTERM lands during the execution of steps 5-8: the save is at 8, between checkpoints.
  with pytest.raises(preemption.TrainingPreempted, match=r"at step 8; checkpoint saved"):
    _train(tmp_path, N, callbacks=[_SigtermAt(4)])
  _train(tmp_path, N)  # Resumes at 8: an execution of 2 steps up to the checkpoint at 10.
  resumed = _checkpoints(tmp_path)
  assert sorted(resumed) == [8, 10, 20]
  del resumed[8]
  _assert_same(_checkpoints(single_steps), resumed)


def test_multistep_nan_stop_names_step_keeps_checkpoint(tmp_path):
  end = _AtEnd()
  with pytest.raises(
    cbs.NonFiniteLossError, match=rf"Non-finite training loss.* at step {BAD}.*ckpt-000000010"
  ):
    _train(tmp_path, N, policy="stop", callbacks=[end])
  # The device loop runs to the end of the execution (no host read per step); the error names
  # the first bad step and nothing after it was saved.
  assert end.step == 14
  assert sorted(_checkpoints(tmp_path)) == [10]


def test_gp_reset_inside_an_execution_is_refused(tmp_path):
  gin.clear_config()
  config.parse(
    [TINY, "methods/sngp.gin"],
    ["train.total_steps=20", "train.steps_per_execution=4", "gp_head.reset_every=6"],
  )
  # Epochs of 10 steps (tiny.gin's checkpoint_every): executions start at 0, 4, 8, 10, ...
  with pytest.raises(ValueError, match=r"reset_every.*step 6 falls inside.*divisor of 2\."):
    train_lib.train(str(tmp_path), "train")
