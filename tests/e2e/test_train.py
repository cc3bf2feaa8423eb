"""End-to-end: train, evaluate, write outputs, export, reload in a fresh process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import log_loss, roc_auc_score

from keras_unc.data import get_source, make_dataset
from tests.e2e.helpers import REPO, run_inprocess


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tiny")
  result = run_inprocess(workdir, params=["train.eval_every=20"])  # Two evaluation rounds.
  return workdir, result


def test_outputs_written(trained):
  workdir, result = trained
  assert result["step"] == 40
  assert os.path.isfile(workdir / "config.gin")
  assert "vit.depth = 1" in (workdir / "config.gin").read_text()
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [20, 40]
  assert {"test/accuracy", "test/nll", "test/ece", "ood_mnist/auroc"} <= records[-1].keys()
  for sub in ("train", "eval"):
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / sub))
  # Keep last K=3 of the checkpoints at 10, 20, 30, 40.
  assert sorted(os.listdir(workdir / "checkpoints")) == [
    "ckpt-000000020",
    "ckpt-000000030",
    "ckpt-000000040",
  ]


def test_tensorboard_has_scalars_and_config(trained):
  workdir, _ = trained
  tags = set()
  for sub in ("train", "eval"):
    for name in os.listdir(workdir / sub):
      for event in tf.compat.v1.train.summary_iterator(str(workdir / sub / name)):
        tags.update(v.tag for v in event.summary.value)
  assert {"train/loss", "train/learning_rate", "test/accuracy", "gin/operative_config"} <= tags


def _serve_in_fresh_process(export_dir, images, tmp_path):
  np.save(tmp_path / "images.npy", images)
  code = (
    "import sys, numpy as np, tensorflow as tf\n"
    "m = tf.saved_model.load(sys.argv[1])\n"
    "out = m.signatures['serving_default'](images=tf.constant(np.load(sys.argv[2])))\n"
    "np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})\n"
  )
  subprocess.run(
    [
      sys.executable,
      "-c",
      code,
      str(export_dir),
      str(tmp_path / "images.npy"),
      str(tmp_path / "out.npz"),
    ],
    check=True,
    cwd=REPO,
    timeout=300,
  )
  return dict(np.load(tmp_path / "out.npz"))


def test_export_reloads_in_fresh_process_and_metrics_are_exact(trained, tmp_path):
  workdir, result = trained
  images, labels = get_source("digits").arrays("test")
  served = _serve_in_fresh_process(result["export"], images, tmp_path)
  assert served["logits"].shape == (len(images), 1, 10)
  assert served["probs"].shape == (len(images), 10)
  assert served["uncertainty"].shape == (len(images),)
  assert served["embedding"].shape == (len(images), 16)
  np.testing.assert_allclose(served["probs"].sum(-1), 1.0, atol=1e-5)
  # The exported model reproduces the metrics the trainer logged at the last step,
  # recomputed here independently with scikit-learn / NumPy.
  last = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
  p = served["probs"].astype(np.float64)
  assert last["test/accuracy"] == pytest.approx(np.mean(p.argmax(1) == labels), abs=1e-6)
  assert last["test/nll"] == pytest.approx(log_loss(labels, p, labels=range(10)), abs=1e-5)
  np.testing.assert_allclose(served["uncertainty"], 1 - p.max(1), atol=1e-6)


def test_ood_auroc_matches_sklearn(trained):
  workdir, result = trained
  net = result["network"]
  inside = get_source("digits").arrays("test")[0].astype(np.float32)
  outside = make_dataset(get_source("mnist"), "test[:300]", "resize(8)", 300, train=False)
  outside = next(iter(outside))[0].numpy().astype(np.float32)
  scores = np.concatenate(
    [net.predict(inside, verbose=0)["uncertainty"], net.predict(outside, verbose=0)["uncertainty"]]
  )
  is_ood = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
  last = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
  assert last["ood_mnist/auroc"] == pytest.approx(roc_auc_score(is_ood, scores), abs=1e-6)
