"""SIGTERM (a preempted TPU VM, a cluster scheduler) finishes the step, saves a checkpoint
and exits with a clear message; the same command resumes, bit-identical to a run that was
never interrupted, even though the save fell between two checkpoint intervals."""

import os
import re
import signal
import time

import gin
import keras
import numpy as np
import pytest

from keras_unc import config
from keras_unc.runtime import checkpoints, preemption
from keras_unc.training import trainer as train_lib
from tests.reliability import harness

PARAMS = [
  "train.total_steps=20",
  "train.checkpoint_every=10",
  "train.eval_every=20",
  "vit.dropout=0.1",
  # The weights are what is compared: no evaluation or export (three runs, 40 s of CI).
  "train.evaluators=[]",
  "train.export_at_end=False",
]


class _SigtermAt(keras.callbacks.Callback):
  def __init__(self, step):
    super().__init__()
    self.step = step

  def on_train_batch_begin(self, batch, logs=None):
    if int(self.model.optimizer.iterations.numpy()) == self.step:
      os.kill(os.getpid(), signal.SIGTERM)  # Arrives while step `self.step + 1` runs.


def _train(workdir, extra_callbacks=()):
  gin.clear_config()
  config.parse([harness.TINY], PARAMS, finalize=False)
  gin.bind_parameter("train.callbacks", list(extra_callbacks))
  return train_lib.train(str(workdir), "train")


def _model_arrays(workdir):
  return harness.final_model(workdir)


def test_sigterm_saves_and_rerun_equals_uninterrupted(tmp_path):
  _train(tmp_path / "reference")
  handler = signal.getsignal(signal.SIGTERM)
  with pytest.raises(
    preemption.TrainingPreempted,
    match=r"Preempted \(SIGTERM\) at step 7; checkpoint saved to .*"
    r"ckpt-000000007\. Rerun the same command to resume",
  ):
    _train(tmp_path / "run", [_SigtermAt(6)])
  assert signal.getsignal(signal.SIGTERM) is handler  # Handler restored after fit.
  ckpt = checkpoints.Checkpointer(str(tmp_path / "run" / "checkpoints"))
  assert ckpt.steps() == [7]
  _train(tmp_path / "run")  # Resumes at 7 (between saves), catches up to 10, ends at 20.
  step_ref, ref = _model_arrays(tmp_path / "reference")
  step_res, res = _model_arrays(tmp_path / "run")
  assert step_ref == step_res == 20 and ckpt.steps() == [20, 10, 7]
  assert harness.max_abs_diff(ref, res) == 0.0


def test_cli_sigterm_exit_code_and_message(tmp_path):
  params = [
    "train.total_steps=400",
    "train.checkpoint_every=50",
    "train.eval_every=400",
    "train.evaluators=[]",
    "train.export_at_end=False",
  ]
  log = str(tmp_path / "run.log")
  proc = harness.start(tmp_path / "run", params, log=log)
  deadline = time.time() + 300
  while not harness.complete_steps(tmp_path / "run"):
    assert proc.poll() is None and time.time() < deadline, "finished before the SIGTERM"
    time.sleep(0.01)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == preemption.EXIT_CODE == 143
  text = open(log).read()
  m = re.search(
    r"PREEMPTED: Preempted \(SIGTERM\) at step (\d+); checkpoint saved to (\S+)\. "
    r"Rerun the same command to resume",
    text,
  )
  assert m, text[-2000:]
  step, path = int(m.group(1)), m.group(2)
  assert step < 400 and step in harness.complete_steps(tmp_path / "run")
  assert checkpoints.read(path)[1]["step"] == step
  assert harness.start(tmp_path / "run", params, log=log).wait(timeout=600) == 0
  assert f"Resumed from {path}" in open(log).read()
  assert harness.final_model(tmp_path / "run")[0] == 400
  assert np.isfinite(harness.final_model(tmp_path / "run")[1]["model/00000"]).all()
