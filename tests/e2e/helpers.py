"""Shared helpers of the end-to-end tests: run the trainer in-process or as `main`."""

import os
import subprocess
import sys

import gin
import keras
import numpy as np

from keras_unc import config
from keras_unc.runtime import checkpoints
from keras_unc.training import trainer as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = "testing/tiny.gin"

# gin class name of every registered method; the method tests check this covers
# `keras_unc.methods.METHODS`, so a new method must be added here (and gets tested).
CLASSES = {
  "deterministic": "Deterministic",
  "batchensemble": "BatchEnsemble",
  "sngp": "SNGP",
  "heteroscedastic": "Heteroscedastic",
  "hetxl": "HetXL",
  "mc_dropout": "MCDropout",
  "shallow_ensemble": "ShallowEnsemble",
  "plex": "Plex",
  "hetsngp": "HetSNGP",
  "be_sngp": "BESNGP",
  "url": "URL",
  "mimo": "MIMO",
  "packed": "Packed",
  "laplace": "Laplace",
  "rank1": "Rank1",
  "swag": "SWAG",
  "variational": "Variational",
}


def run_inprocess(workdir, mode="train_and_eval", params=(), gin_file=TINY):
  gin.clear_config()  # A previous run in this test finalised (locked) the config.
  config.parse([gin_file], list(params))
  return train_lib.train(str(workdir), mode)


class StopAfterFirstEpoch(keras.callbacks.Callback):
  """Ends `fit` after its first epoch: the trainer's steps up to its first checkpoint."""

  def on_epoch_end(self, epoch, logs=None):
    self.model.stop_training = True


def run_stopped(workdir, params, callback=None, gin_file=TINY):
  """A `train` run of `params` in `workdir` that `callback` stops early (default
  `StopAfterFirstEpoch`); `run_inprocess(workdir, "train", params)` then resumes it."""
  gin.clear_config()
  config.parse([gin_file], list(params))
  return train_lib.train(str(workdir), "train", callbacks=[callback or StopAfterFirstEpoch()])


def main_command(workdir, *args, gin_file=TINY):
  return [
    sys.executable,
    "-m",
    "keras_unc.main",
    f"--gin_file={gin_file}",
    f"--workdir={workdir}",
    *args,
  ]


def run_main(workdir, *args, check=True, gin_file=TINY):
  proc = subprocess.run(
    main_command(workdir, *args, gin_file=gin_file),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  if check and proc.returncode != 0:
    raise AssertionError(f"main failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


def final_model_arrays(workdir):
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
  step, arrays, _ = ckpt.load_latest()
  return step, {k: v for k, v in arrays.items() if k.startswith("model/")}


def max_abs_diff(a, b):
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) if a[k].size else 0.0 for k in a)
