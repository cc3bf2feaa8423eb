"""Few-shot evaluation during pretraining (at `eval_every`), and only_eval runs: `--mode=eval`
of a warm-start or imported checkpoint, without training."""

import json

import numpy as np
import pytest

from keras_unc import metrics
from keras_unc.backbones.pretrained.npz_import import export_npz
from keras_unc.data import get_source
from keras_unc.runtime import checkpoints
from tests.e2e.helpers import run_inprocess

FEWSHOT = [
  "train.total_steps = 20",
  "train.eval_every = 10",
  "train.export_at_end = False",
  "train.evaluators = [@ClassificationEvaluator(), @FewShotEvaluator()]",
  "FewShotEvaluator.datasets = {'digits': ('digits', 'train[:600]', 'test')}",
  "FewShotEvaluator.shots = (1, 5)",
  "FewShotEvaluator.seeds = (0,)",
]


def _records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _ridge_accuracy(x, y, x_test, y_test, l2=2.0**10, classes=10):
  """big_vision fewshot_lsr by hand: standardise with the shots' statistics, bias column
  of 100, targets 2 onehot - 1, closed-form ridge."""
  mean, std = x.mean(0), x.std(0) + 1e-5

  def features(z):
    z = (z - mean) / std
    return np.concatenate([z, np.full((len(z), 1), 100.0)], 1)

  a, targets = features(x), 2 * np.eye(classes)[y] - 1
  w = np.linalg.solve(a.T @ a + l2 * np.eye(a.shape[1]), a.T @ targets)
  return float(np.mean((features(x_test) @ w).argmax(1) == y_test))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pretrain")
  return workdir, run_inprocess(workdir, "train_and_eval", FEWSHOT)


def test_fewshot_runs_every_eval_every_steps(pretrained):
  workdir, result = pretrained
  records = _records(workdir)
  assert [r["step"] for r in records] == [10, 20]
  for r in records:
    assert {"fewshot/digits_1shot", "fewshot/digits_5shot", "test/accuracy"} <= r.keys()
  # The logged 5-shot accuracy of the final network, recomputed by hand.
  net = result["network"]
  images, labels = get_source("digits").arrays("train[:600]")
  test_images, test_labels = get_source("digits").arrays("test")
  train_emb = np.asarray(net.predict(images.astype("float32"), verbose=0)["embedding"], float)
  test_emb = np.asarray(net.predict(test_images.astype("float32"), verbose=0)["embedding"], float)
  idx = metrics.select_shots(labels, 5, 0, 10)
  want = _ridge_accuracy(train_emb[idx], labels[idx], test_emb, test_labels)
  assert records[-1]["fewshot/digits_5shot"] == pytest.approx(want, abs=1e-6)


def test_only_eval_of_a_warm_start_checkpoint(pretrained, tmp_path):
  workdir, _ = pretrained
  ckpt = checkpoints.Checkpointer(str(workdir / "checkpoints"))
  result = run_inprocess(
    tmp_path / "eval", "eval", FEWSHOT + [f"train.warm_start = '{ckpt.path(ckpt.steps()[0])}'"]
  )
  assert result["step"] == 0
  assert not checkpoints.Checkpointer(str(tmp_path / "eval" / "checkpoints")).steps()
  got, want = _records(tmp_path / "eval")[-1], _records(workdir)[-1]
  for key in ("test/accuracy", "test/nll", "fewshot/digits_5shot"):
    assert got[key] == pytest.approx(want[key], abs=1e-6), key


def test_only_eval_of_an_imported_npz(pretrained, tmp_path):
  workdir, result = pretrained
  path = str(tmp_path / "vit.npz")
  export_npz(result["network"], path, format="big_vision", head=True)
  params = [p for p in FEWSHOT if "FewShot" not in p] + [
    "train.evaluators = [@ClassificationEvaluator()]",
    f"import_weights.path = '{path}'",
    "import_weights.keep_head = True",
  ]
  evaluated = run_inprocess(tmp_path / "eval_npz", "eval", params)
  assert evaluated["step"] == 0
  got, want = _records(tmp_path / "eval_npz")[-1], _records(workdir)[-1]
  assert got["test/accuracy"] == pytest.approx(want["test/accuracy"], abs=1e-6)
  assert got["test/nll"] == pytest.approx(want["test/nll"], abs=1e-5)


def test_only_eval_without_weights_is_refused(tmp_path):
  with pytest.raises(FileNotFoundError, match="import_weights.path"):
    run_inprocess(tmp_path / "nothing", "eval", FEWSHOT)
