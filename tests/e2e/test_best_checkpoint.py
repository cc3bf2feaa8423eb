"""Best checkpoint by `train.eval_metric`: kept, recorded, reported and kept across resumes."""

import json
import os

import keras
import numpy as np
import pytest

from keras_unc.runtime import best_checkpoint, checkpoints
from tests.e2e.helpers import run_inprocess

RETRIEVAL = (
  "train.evaluators = [@ClassificationEvaluator(), @RetrievalEvaluator()]",
  "RetrievalEvaluator.datasets = {'fmnist': ('fashion_mnist', 'test[:200]', 'resize(8)')}",
  "RetrievalEvaluator.upstream = ('digits', 'test')",
  "RetrievalEvaluator.crop_min = 0.4",
  "train.eval_every = 10",
  "train.keep_checkpoints = 1",
  "train.export_at_end = False",
)


def _records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_best_by_avg_downstream_auroc_correct(tmp_path):
  workdir = tmp_path / "run"
  run_inprocess(workdir, params=RETRIEVAL + ("train.eval_metric = 'avg_downstream_auroc_correct'",))
  records = _records(workdir)
  key = "retrieval/avg_downstream_auroc_correct"
  assert [r["step"] for r in records] == [10, 20, 30, 40]
  values = [r[key] for r in records]
  best = int(np.argmax(values))  # By hand: first maximum (ties keep the earlier).
  state = json.loads((workdir / "best.json").read_text())
  assert state["step"] == records[best]["step"] and state["value"] == values[best]
  assert state["metric"] == key and state["mode"] == "max"
  # Every round reports the best so far, in metrics.jsonl and TensorBoard.
  for i, r in enumerate(records):
    j = int(np.argmax(values[: i + 1]))
    assert r["best_step"] == records[j]["step"]
    assert r[f"best_{key}"] == values[j]
    assert r["best_test/accuracy"] == records[j]["test/accuracy"]
  # The best checkpoint survives keep-last-1 pruning of the regular checkpoints.
  assert os.listdir(workdir / "best") == [f"ckpt-{state['step']:09d}"]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["ckpt-000000040"]
  # Its weights give back the recorded metrics when evaluated in a fresh workdir.
  result = run_inprocess(
    tmp_path / "again",
    mode="eval",
    params=RETRIEVAL + (f"train.warm_start = '{workdir / state['path']}'",),
  )
  assert result["metrics"][key] == pytest.approx(values[best], abs=1e-6)
  assert result["metrics"]["test/accuracy"] == pytest.approx(
    records[best]["test/accuracy"], abs=1e-6
  )


def test_best_survives_resume(tmp_path):
  # Select by minimal test accuracy: training improves it, so the best stays in the first
  # process and must be kept (not overwritten) by the resumed one.
  params = (
    "train.eval_every = 10",
    "train.evaluators = [@ClassificationEvaluator()]",
    "train.eval_metric = 'test/accuracy'",
    "train.eval_metric_mode = 'min'",
    "train.export_at_end = False",
  )
  run_inprocess(tmp_path, params=params + ("train.total_steps = 20",))
  first = json.loads((tmp_path / "best.json").read_text())
  best_dir = tmp_path / first["path"]
  stamp = {n: os.stat(best_dir / n).st_mtime_ns for n in os.listdir(best_dir)}
  run_inprocess(tmp_path, params=params + ("train.total_steps = 40",))
  records = _records(tmp_path)
  assert [r["step"] for r in records] == [10, 20, 30, 40]
  acc = [r["test/accuracy"] for r in records]
  want = int(np.argmin(acc))
  assert want < 2, acc  # The premise of this test: the best is from the first process.
  state = json.loads((tmp_path / "best.json").read_text())
  assert state == first and state["step"] == records[want]["step"]
  assert {n: os.stat(best_dir / n).st_mtime_ns for n in os.listdir(best_dir)} == stamp
  assert records[-1]["best_test/accuracy"] == acc[want]
  assert records[-1]["best_step"] == records[want]["step"]


def _tiny_model():
  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)], name="tiny")
  optimizer = keras.optimizers.SGD(0.1)
  optimizer.build(model.trainable_variables)
  return model, optimizer


def test_best_checkpoint_unit(tmp_path):
  model, optimizer = _tiny_model()
  best = best_checkpoint.BestCheckpoint(str(tmp_path), "acc", "min")
  assert best.update(1, {"val/acc": float("nan")}, model, optimizer) == {}  # NaN never wins.
  assert best.update(2, {"val/acc": 0.5, "val/nll": 1.0}, model, optimizer) == {
    "best_val/acc": 0.5,
    "best_val/nll": 1.0,
    "best_step": 2.0,
  }
  kernel = model.get_weights()[0].copy()
  model.layers[0].kernel.assign(kernel + 1)
  best.update(3, {"val/acc": 0.7, "val/nll": 0.1}, model, optimizer)  # Worse in "min".
  assert best.step == 2
  arrays, meta = checkpoints.read(best.path())
  assert meta["step"] == 2
  np.testing.assert_array_equal(arrays["model/00000"], kernel)
  # Hard links to the run's checkpoint of the same step, when it has one.
  ckpt = checkpoints.Checkpointer(str(tmp_path / "checkpoints"))
  ckpt.save(4, model, optimizer)
  best.update(4, {"val/acc": 0.25, "val/nll": 2.0}, model, optimizer, ckpt)
  assert os.listdir(tmp_path / "best") == ["ckpt-000000004"]
  assert os.path.samefile(
    tmp_path / "best" / "ckpt-000000004" / "variables.npz",
    tmp_path / "checkpoints" / "ckpt-000000004" / "variables.npz",
  )
  # A restart reads best.json; another metric or mode starts a new best.
  again = best_checkpoint.BestCheckpoint(str(tmp_path), "acc", "min")
  assert again.step == 4 and again.value == 0.25
  assert best_checkpoint.BestCheckpoint(str(tmp_path), "acc", "max").step is None
  assert best_checkpoint.BestCheckpoint(str(tmp_path), "nll", "min").step is None


def test_best_checkpoint_errors(tmp_path):
  model, optimizer = _tiny_model()
  with pytest.raises(ValueError, match="eval_metric_mode must be one of"):
    best_checkpoint.BestCheckpoint(str(tmp_path), "acc", "biggest")
  best = best_checkpoint.BestCheckpoint(str(tmp_path), "acc")
  with pytest.raises(
    ValueError,
    match=r"not among the evaluation metrics: choose one of "
    r"\['val/nll'\]",
  ):
    best.update(1, {"val/nll": 1.0}, model, optimizer)
  with pytest.raises(ValueError, match="ambiguous"):
    best.update(1, {"a/acc": 1.0, "b/acc": 0.0}, model, optimizer)
  assert best_checkpoint.resolve_metric("b/acc", {"a/acc": 1.0, "b/acc": 0.0}) == "b/acc"
