"""Deep ensembles of independently trained runs: one network whose `probs` are the members'
mean, exported as one SavedModel; members of different architectures are refused.
"""

import os
import subprocess
import sys

import gin
import numpy as np
import pytest

from keras_unc import config
from keras_unc.training import ensemble, restore
from keras_unc.training import trainer as train_lib
from tests.e2e.helpers import REPO, TINY

SHORT = (
  "train.total_steps = 20",
  "train.eval_every = 20",
  "train.evaluators = [@ClassificationEvaluator()]",
)


def _train(workdir, params=()):
  gin.clear_config()
  config.parse([TINY], [*SHORT, *params])
  train_lib.train(str(workdir), "train")
  return str(workdir)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
  root = tmp_path_factory.mktemp("ensemble")
  return [_train(root / f"seed{s}", [f"train.seed = {s}"]) for s in (0, 1)]


def _images(n=32):
  from keras_unc.data import get_source

  return np.asarray(get_source("digits").arrays("test")[0][:n])


def test_ensemble_probs_are_the_mean_of_the_members(members, tmp_path):
  import tensorflow as tf

  gin.clear_config()
  config.parse([os.path.join(members[0], "config.gin")])
  result = ensemble.build_ensemble(members, str(tmp_path / "ens"))
  images = _images()
  member_probs, member_logits = [], []
  for workdir in members:
    gin.clear_config()
    config.parse([os.path.join(workdir, "config.gin")])
    network, _, _ = restore.restore_network(workdir)
    out = network(images.astype(np.float32), training=False)
    member_probs.append(np.asarray(out["probs"]))
    member_logits.append(np.asarray(out["logits"]))
  assert not np.allclose(member_probs[0], member_probs[1], atol=1e-3)  # Different seeds.
  found = {k: np.asarray(v) for k, v in result["network"](images.astype(np.float32)).items()}
  np.testing.assert_allclose(found["probs"], np.mean(member_probs, axis=0), atol=1e-6)
  np.testing.assert_allclose(found["logits"], np.concatenate(member_logits, axis=1), atol=1e-6)
  np.testing.assert_allclose(found["uncertainty"], 1 - found["probs"].max(axis=1), atol=1e-6)
  serve = tf.saved_model.load(result["export"]).signatures["serving_default"]
  served = serve(images=tf.constant(images))
  np.testing.assert_allclose(np.asarray(served["probs"]), found["probs"], atol=1e-5)
  assert served["logits"].shape[1] == 2 and "member_accuracy" in str(result["metrics"])


def test_members_of_another_architecture_are_refused_naming_the_difference(members, tmp_path):
  other = _train(tmp_path / "wide", ["vit.width = 24", "train.total_steps = 10"])
  with pytest.raises(ensemble.EnsembleMismatchError, match=r"variable #\d+ .*\(.*24"):
    ensemble.check_members([members[0], other])
  assert not os.path.exists(tmp_path / "out")


def test_multi_member_runs_stack_along_the_member_axis(tmp_path):
  be = ["train.method = @BatchEnsemble()", "BatchEnsemble.ensemble_size = 2"]
  be += ["train.total_steps = 10"]
  runs = [_train(tmp_path / f"be{s}", [*be, f"train.seed = {s}"]) for s in (0, 1)]
  gin.clear_config()
  config.parse([os.path.join(runs[0], "config.gin")])
  result = ensemble.build_ensemble(runs, str(tmp_path / "ens"), evaluators=(), export=False)
  members = result["network"].members[0](_images(4).astype(np.float32))["logits"].shape[1]
  out = result["network"](_images(4).astype(np.float32))
  assert members > 1 and out["logits"].shape[1] == 2 * members


def test_ensemble_verb_refuses_one_member(members, tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "keras_unc",
      "ensemble",
      f"--members={members[0]}",
      f"--workdir={tmp_path / 'x'}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 2 and "at least 2 members" in proc.stderr, proc.stderr[-2000:]
