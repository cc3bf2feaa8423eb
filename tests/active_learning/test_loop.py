"""End to end: 2 active-learning rounds on digits (tiny config), resume, bad input."""

import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from keras_unc import config
from keras_unc.active_learning import active_learning, loop
from keras_unc.training import trainer as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = "testing/active_learning_tiny.gin"


def _run(workdir, params=()):
  gin.clear_config()
  config.parse([TINY], list(params))
  return active_learning(str(workdir))


def _labelled(workdir, r):
  with open(os.path.join(workdir, f"round_{r:03d}", "labelled.json")) as f:
    spec = json.load(f)
  assert spec["split"] == "train"
  return spec["indices"]


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return f.read().splitlines()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("al")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "keras_unc",
      "active-learning",
      f"--gin_file={TINY}",
      f"--workdir={workdir}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return workdir, proc.stdout


def test_two_rounds_write_growing_labelled_sets(cli_run):
  workdir, stdout = cli_run
  records = [json.loads(line) for line in _lines(workdir)]
  assert [r["round"] for r in records] == [0, 1]
  assert [r["num_labelled"] for r in records] == [20, 30]
  assert all(0.0 <= r["accuracy"] <= 1.0 for r in records)
  assert records[0]["accuracy"] == records[0]["metrics"]["test/accuracy"]
  assert records[0]["class_counts"] == [2] * 10  # class-balanced start
  assert "labels  accuracy" in stdout and "30" in stdout
  # Round 1's labelled set = round 0's + the acquired ones: new, distinct, in the pool.
  first, second = _labelled(workdir, 0), _labelled(workdir, 1)
  acquired = records[0]["acquired"]
  assert second == first + acquired and len(acquired) == 10
  assert len(set(second)) == 30 and not set(acquired) & set(first)
  assert all(0 <= i < 1500 for i in second)
  assert records[1]["acquired"] == []  # The last round acquires nothing.
  # Each round trained on its own labelled subset through the one trainer.
  cfg = (workdir / "round_001" / "config.gin").read_text()
  assert os.path.isfile(workdir / "round_001" / "metrics.jsonl")
  assert os.path.isdir(workdir / "round_001" / "checkpoints")
  assert "vit.depth = 1" in cfg


def test_entropy_acquires_highest_entropy_examples(cli_run):
  # Recompute the round-0 scores from its checkpoint: the acquired ones are the top 10.
  workdir, _ = cli_run
  gin.clear_config()
  config.parse([TINY])
  labelled = _labelled(workdir, 0)
  result = train_lib.train(
    str(workdir / "round_000"), "eval", dataset=f"digits@{workdir}/round_000/labelled.json"
  )
  from keras_unc.evaluators import Predictor

  outputs, _ = Predictor(result["network"])("digits", "train")
  p = outputs["probs"].astype(np.float64)
  h = -(p * np.log(np.maximum(p, 1e-300))).sum(axis=1)
  h[labelled] = -np.inf
  acquired = json.loads(_lines(workdir)[0])["acquired"]
  assert sorted(acquired) == sorted(np.argsort(-h)[:10].tolist())


def test_tensorboard_accuracy_vs_labels(cli_run):
  workdir, _ = cli_run
  steps = {}
  folder = workdir / "active_learning"
  for name in os.listdir(folder):
    for event in tf.compat.v1.train.summary_iterator(str(folder / name)):
      for v in event.summary.value:
        steps.setdefault(v.tag, []).append(event.step)
  assert sorted(steps["active_learning/accuracy_vs_labels"]) == [20, 30]
  assert sorted(steps["active_learning/num_labelled"]) == [0, 1]


def test_rerun_does_not_redo_finished_rounds(cli_run, monkeypatch):
  workdir, _ = cli_run
  before = _lines(workdir)

  def fail(*args, **kwargs):
    raise AssertionError("a finished round was trained again")

  monkeypatch.setattr(loop.train_lib, "train", fail)
  records = _run(workdir)
  assert [r["num_labelled"] for r in records] == [20, 30]
  assert _lines(workdir) == before


def test_resume_after_interrupted_round(cli_run, monkeypatch):
  # Round 1 trained but its line was never written (killed just before): the rerun only
  # evaluates round 1's final checkpoint, never touches round 0, and logs the same numbers.
  workdir, _ = cli_run
  lines = _lines(workdir)
  with open(workdir / "metrics.jsonl", "w") as f:
    f.write(lines[0] + "\n")
  calls = []
  real = train_lib.train

  def spy(rdir, mode, **kwargs):
    calls.append((os.path.basename(rdir), mode))
    return real(rdir, mode, **kwargs)

  monkeypatch.setattr(loop.train_lib, "train", spy)
  _run(workdir)
  assert calls == [("round_001", "train_and_eval"), ("round_001", "eval")]
  new = _lines(workdir)
  assert new[0] == lines[0]
  assert json.loads(new[1])["accuracy"] == pytest.approx(json.loads(lines[1])["accuracy"])


def test_bald_mc_dropout_finetune_with_gumbel(tmp_path, monkeypatch):
  calls = []
  real = train_lib.train

  def spy(rdir, mode, **kwargs):
    calls.append(kwargs)
    return real(rdir, mode, **kwargs)

  monkeypatch.setattr(loop.train_lib, "train", spy)
  params = [
    "include 'methods/mc_dropout.gin'",
    "MCDropout.num_samples = 4",
    "active_learning.strategy = 'bald'",
    "active_learning.retrain = 'finetune'",
    "active_learning.noise = 'power'",
    "active_learning.gumbel_scale = 0.5",
    "active_learning.initial_selection = 'random'",
    "active_learning.num_rounds = 2",
  ]
  records = _run(tmp_path, params)
  assert [r["num_labelled"] for r in records] == [20, 30]
  first, second = _labelled(tmp_path, 0), _labelled(tmp_path, 1)
  assert len(set(second)) == 30 and set(first) < set(second)
  # Each round trains on its labelled subset; fine-tuning warm-starts round 1 from round 0.
  assert [c["dataset"] for c in calls] == [
    f"digits@{tmp_path}/round_{r:03d}/labelled.json" for r in (0, 1)
  ]
  assert calls[0]["warm_start"] is None
  assert calls[1]["warm_start"] == f"{tmp_path}/round_000/checkpoints/ckpt-000000020"


@pytest.mark.parametrize(
  "params, match",
  [
    (
      ["active_learning.pool_split = 'train[:25]'"],
      r"need 30 examples, but the pool digits/train\[:25\] has 25",
    ),
    (["active_learning.strategy = 'entropie'"], "Unknown acquisition strategy 'entropie'"),
    (["active_learning.noise = 'gauss'"], "Unknown acquisition noise 'gauss'"),
    (["active_learning.retrain = 'warm'"], "Unknown retrain 'warm'"),
  ],
)
def test_bad_input_fails_before_training(tmp_path, params, match, monkeypatch):
  monkeypatch.setattr(loop.train_lib, "train", lambda *a, **k: pytest.fail("trained"))
  with pytest.raises(ValueError, match=match):
    _run(tmp_path, params)
