"""Bootstrap intervals of evaluator metrics: hand-written NumPy bootstrap, runner, summary."""

import json
import zlib

import gin
import numpy as np
import pytest
import tensorflow as tf

from keras_unc.cli.train import summary_table
from keras_unc.evaluators import ClassificationEvaluator, OODEvaluator
from keras_unc.evaluators.base import Evaluator, Prefixed
from keras_unc.evaluators.bootstrap import Bootstrap, ResampledPredict
from keras_unc.evaluators.runner import run_round


def _case(seed, n, c=3, dim=4):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, c, size=n)
  logits = rng.normal(size=(n, c)) + 2.0 * np.eye(c)[labels]  # A decent classifier.
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  outputs = {
    "probs": probs,
    "uncertainty": 1.0 - probs.max(1),
    "logits": logits[:, None],
    "embedding": rng.normal(size=(n, dim)) + np.eye(c, dim)[labels],
  }
  return outputs, labels


class FakePredictor:
  """Fixed outputs per (dataset, split); counts the calls as a Predictor counts passes."""

  def __init__(self, data):
    self.data = data
    self.calls = []

  def reset(self):
    pass

  def __call__(self, dataset, split, preprocess="", cache=True):
    self.calls.append((dataset, split, preprocess, cache))
    return self.data[dataset, split]


def _hand_indices(seed, replicate, key, n):
  """The documented draw, written out: default_rng([seed, crc32(repr(key)), replicate])."""
  stream = zlib.crc32(repr(key).encode("utf-8"))
  return np.random.default_rng([seed, stream, replicate]).integers(0, n, size=n)


def test_accuracy_interval_matches_a_hand_written_bootstrap():
  outputs, labels = _case(0, 120)
  predict = FakePredictor({("fake", "test"): (outputs, labels)})
  evaluator = ClassificationEvaluator("fake", "test", oracle_fractions=())
  found = evaluator.evaluate(predict)
  ci = Bootstrap(num_samples=200, seed=3)([evaluator], predict, found)
  values = []
  for r in range(200):
    idx = _hand_indices(3, r, ("fake", "test", ""), 120)
    values.append(np.mean(outputs["probs"][idx].argmax(1) == labels[idx]))
  low, high = np.percentile(values, [2.5, 97.5])
  assert ci["test/accuracy/ci_low"] == pytest.approx(low, abs=1e-15)
  assert ci["test/accuracy/ci_high"] == pytest.approx(high, abs=1e-15)
  # Every scalar gets both ends; the predictions were read once, not once per replicate.
  assert set(ci) == {f"{k}/ci_{end}" for k in found for end in ("low", "high")}
  assert len(predict.calls) == 2  # The point estimate and the bootstrap.
  for k in ("accuracy", "nll", "brier", "aurc", "augrc", "risk_at_80pct_coverage"):
    assert ci[f"test/{k}/ci_low"] < found[f"test/{k}"] < ci[f"test/{k}/ci_high"], k
  # Same seed: same interval; another seed: another one.
  again = Bootstrap(num_samples=200, seed=3)([evaluator], predict, found)
  other = Bootstrap(num_samples=200, seed=4)([evaluator], predict, found)
  assert again == ci and other["test/accuracy/ci_low"] != ci["test/accuracy/ci_low"]


def test_resampled_predict_pairs_rows_and_keeps_identity_within_a_replicate():
  outputs, labels = _case(1, 30)
  outputs["tag"] = np.arange(30)  # Row numbers: tell which rows were drawn.
  predict = FakePredictor({("a", "test"): (outputs, labels), ("b", "test"): (outputs, labels)})
  resampled = ResampledPredict(predict, seed=0)
  resampled.start(0)
  first, first_labels = resampled("a", "test")
  assert resampled("a", "test")[0] is first  # Cached for the replicate: same arrays.
  np.testing.assert_array_equal(first_labels, labels[first["tag"]])
  np.testing.assert_array_equal(first["probs"], outputs["probs"][first["tag"]])
  np.testing.assert_array_equal(first["tag"], _hand_indices(0, 0, ("a", "test", ""), 30))
  other, _ = resampled("b", "test")
  assert not np.array_equal(other["tag"], first["tag"])  # Independent per split.
  resampled.start(1)
  assert not np.array_equal(resampled("a", "test")[0]["tag"], first["tag"])
  # A split read with cache=False is read once for the whole bootstrap, with cache=False.
  predict.data["b", "val"] = (outputs, labels)
  for r in range(3):
    resampled.start(r)
    resampled("b", "val", cache=False)
  assert predict.calls.count(("b", "val", "", False)) == 1


class Flaky(Evaluator):
  """Reports the mean label, NaN on resamples whose first label is 0."""

  name = "flaky"

  def evaluate(self, predict):
    _, labels = predict("fake", "test")
    return {"flaky/mean": float("nan") if labels[0] == 0 else float(np.mean(labels))}


def test_nan_replicates_are_left_out():
  outputs, labels = _case(2, 40)
  predict = FakePredictor({("fake", "test"): (outputs, labels)})
  ci = Bootstrap(num_samples=100, seed=1)([Flaky()], predict, {"flaky/mean": 1.0})
  kept = []
  for r in range(100):
    drawn = labels[_hand_indices(1, r, ("fake", "test", ""), 40)]
    if drawn[0] != 0:
      kept.append(drawn.mean())
  assert 0 < len(kept) < 100
  want = np.percentile(kept, [2.5, 97.5])
  assert (ci["flaky/mean/ci_low"], ci["flaky/mean/ci_high"]) == pytest.approx(tuple(want))


def test_ood_mahalanobis_is_refitted_per_replicate():
  inside, in_labels = _case(3, 60)
  outside, _ = _case(4, 50)
  outside["embedding"] = outside["embedding"] + 1.5
  train, train_labels = _case(5, 90)
  predict = FakePredictor(
    {
      ("fake", "test"): (inside, in_labels),
      ("fake", "train"): (train, train_labels),
      ("ood", "test"): (outside, np.zeros(50, int)),
    }
  )
  evaluator = OODEvaluator(
    "fake", ood={"o": ("ood", "test")}, scores=("msp", "mahalanobis"), plot=False
  )
  found = evaluator.evaluate(predict)
  ci = Bootstrap(num_samples=30, seed=0)([evaluator], predict, found)
  for k in ("ood_o/auroc_mahalanobis", "ood_o/auroc_msp"):
    assert ci[f"{k}/ci_low"] < ci[f"{k}/ci_high"], k
  # The fit after the bootstrap is on the last replicate's train resample, not the point's.
  assert evaluator._fit_cache[0] is not train["embedding"]
  assert evaluator.evaluate(predict) == found  # A later point estimate refits: unchanged.


def _round(tmp_path, bootstrap=None):
  outputs, labels = _case(6, 80)
  predict = FakePredictor({("fake", "test"): (outputs, labels)})
  evaluators = [ClassificationEvaluator("fake", "test", oracle_fractions=(0.1,), plot=False)]
  writer = tf.summary.create_file_writer(str(tmp_path / "eval"))
  return run_round(evaluators, predict, str(tmp_path), writer, 7, bootstrap=bootstrap)


def test_run_round_off_by_default_and_with_zero_samples(tmp_path):
  plain = _round(tmp_path / "a")
  zero = _round(tmp_path / "b", Bootstrap(num_samples=0))
  assert plain == zero and not any(k.endswith("/ci_low") for k in plain)


def test_run_round_writes_intervals_to_metrics_jsonl(tmp_path):
  gin.parse_config("bootstrap.num_samples = 50\nbootstrap.confidence = 0.9")
  found = _round(tmp_path)
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  record = json.loads(lines[-1])
  metrics = [k for k in record if k != "step" and not k.endswith(("/ci_low", "/ci_high"))]
  assert "test/accuracy" in metrics and "test/augrc" in metrics
  for k in metrics:
    assert f"{k}/ci_low" in record and f"{k}/ci_high" in record, k
    assert record[f"{k}/ci_low"] <= record[f"{k}/ci_high"], k
  assert record == found
  table = summary_table({"step": 7, "metrics": found, "export": None}, str(tmp_path))
  row = next(line for line in table.splitlines() if line.startswith("test/accuracy "))
  low, high = found["test/accuracy/ci_low"], found["test/accuracy/ci_high"]
  assert row.split()[1:] == [f"{found['test/accuracy']:.4f}", f"[{low:.4f},", f"{high:.4f}]"]
  assert "ci_low" not in table and "ci_high" not in table


@pytest.mark.parametrize(
  ("kwargs", "match"),
  [
    ({"num_samples": -1}, "bootstrap.num_samples must be an integer >= 0"),
    ({"num_samples": 2.5}, "bootstrap.num_samples must be an integer >= 0"),
    ({"confidence": 1.0}, r"confidence must be a number in \(0, 1\)"),
    ({"confidence": 95}, r"confidence must be a number in \(0, 1\)"),
    ({"seed": -2}, "bootstrap.seed must be an integer >= 0"),
  ],
)
def test_bad_bootstrap_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    Bootstrap(**kwargs)


def test_prefixed_evaluators_are_resampled_and_their_wrappers_reused():
  outputs, labels = _case(7, 50)
  predict = FakePredictor({("fake", "test"): (outputs, labels)})

  def sharpen(found):
    p = found["probs"] ** 2
    return {**found, "probs": p / p.sum(1, keepdims=True)}

  inner = ClassificationEvaluator("fake", "test", oracle_fractions=(), plot=False)
  after = Prefixed(inner, "posthoc/", sharpen)
  bootstrap = Bootstrap(num_samples=20, seed=0)
  for _ in range(3):  # Three rounds.
    found = after.evaluate(predict)
    ci = bootstrap([after], predict, found)
  assert ci["posthoc/test/nll/ci_low"] < found["posthoc/test/nll"] < ci["posthoc/test/nll/ci_high"]
  assert len(after._wrapped) == 2  # The predictor's and one resampling wrapper, every round.
