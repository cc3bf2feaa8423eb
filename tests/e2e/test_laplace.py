"""Last-layer Laplace through the trainer: fitted once after the last step, saved with the
final checkpoint, not refitted by a rerun, used as stored by `--mode=eval`."""

import os

import numpy as np

from keras_unc.methods import Laplace
from keras_unc.runtime import checkpoints
from keras_unc.training import posttrain
from tests.e2e.helpers import run_inprocess

PARAMS = [
  "train.method = @Laplace()",
  "train.total_steps = 6",
  "train.eval_every = 6",
  "train.checkpoint_every = 3",
  "train.evaluators = [@ClassificationEvaluator()]",
]


def _stored(workdir, name):
  step, arrays, meta = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints")).load_latest()
  paths = [p for p, _ in meta["variables"]]
  (i,) = [i for i, p in enumerate(paths) if p.endswith(f"head/{name}")]
  return step, float(arrays[f"model/{i:05d}"])


def test_posterior_is_fitted_once_checkpointed_and_used_by_eval(tmp_path):
  first = run_inprocess(tmp_path, params=PARAMS)
  head = first["network"].get_layer("head")
  tau = float(head.prior_precision.numpy())
  assert float(head.fitted.numpy()) == 1.0 and tau != 1.0  # τ tuned by marglik
  assert _stored(tmp_path, "fitted") == (6, 1.0)
  assert np.isclose(_stored(tmp_path, "prior_precision")[1], tau)
  ckpt_dir = checkpoints.Checkpointer(os.path.join(tmp_path, "checkpoints")).path(6)
  before = os.stat(ckpt_dir).st_mtime_ns

  # A rerun of the finished workdir neither retrains nor refits (the checkpoint is untouched).
  again = run_inprocess(tmp_path, mode="train", params=PARAMS)
  assert os.stat(ckpt_dir).st_mtime_ns == before
  assert float(again["network"].get_layer("head").prior_precision.numpy()) == tau

  # Eval mode restores the stored posterior: the same metrics as the end of training.
  evaluated = run_inprocess(tmp_path, mode="eval", params=PARAMS)
  assert float(evaluated["network"].get_layer("head").fitted.numpy()) == 1.0
  for key in ("test/nll", "test/ece", "test/accuracy"):
    np.testing.assert_allclose(evaluated["metrics"][key], first["metrics"][key], rtol=1e-6)

  # A refit (e.g. after a kill between the fit and the save) is deterministic.
  head = evaluated["network"].get_layer("head")
  head.fitted.assign(0.0)
  method = Laplace()
  fit_args = dict(dataset="digits", split="train", preprocess="", batch_size=128)
  assert posttrain.fit(method, evaluated["network"], **fit_args)
  assert float(head.prior_precision.numpy()) == tau
