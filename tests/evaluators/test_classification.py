"""ClassificationEvaluator: every number equals the metric function on the raw outputs."""

import numpy as np
import pytest

from keras_unc import metrics
from keras_unc.evaluators import ClassificationEvaluator, Predictor
from tests.evaluators.helpers import FakeNet, digits, direct

FRACTIONS = (0.005, 0.01, 0.02, 0.05)


def _by_hand(out, labels):
  p, u = out["probs"], out["uncertainty"]
  want = {
    "accuracy": metrics.accuracy(p, labels),
    "top5_accuracy": metrics.top_k_accuracy(p, labels, 5),
    "nll": metrics.nll(p, labels),
    "ece": metrics.expected_calibration_error(p, labels, 15),
    "adaptive_ece": metrics.adaptive_calibration_error(p, labels, 15),
    "classwise_ece": metrics.classwise_calibration_error(p, labels, 15),
    "brier": metrics.brier_score(p, labels),
    "calibration_auroc": metrics.calibration_auroc(p, labels, u),
    "aurc": metrics.aurc(p, labels, u),
    "augrc": metrics.augrc(p, labels, u),
    "risk_at_80pct_coverage": metrics.risk_at_coverage(p, labels, 0.8, u),
  }
  for f, name in zip(FRACTIONS, ("0.5pct", "1pct", "2pct", "5pct")):
    want[f"oracle_accuracy_{name}"] = metrics.oracle_collaborative_accuracy(p, labels, f, u)
  return want


def test_deterministic_metrics_match_and_no_member_metrics():
  net = FakeNet(members=1)
  found = ClassificationEvaluator("digits", "test").evaluate(Predictor(net, batch_size=128))
  images, labels = digits("test")
  want = {f"test/{k}": v for k, v in _by_hand(direct(net, images), labels).items()}
  assert found.keys() == want.keys()  # No member / diversity metrics for M = 1.
  for k, v in want.items():
    assert found[k] == pytest.approx(v, abs=1e-6), k
  assert 0.5 < found["test/accuracy"] < 1.0  # The fake network is a real classifier.
  assert found["test/oracle_accuracy_5pct"] > found["test/oracle_accuracy_0.5pct"]


def test_ensemble_member_metrics():
  net = FakeNet(members=3)
  evaluator = ClassificationEvaluator("digits", "test[:200]", prefix="val", oracle_fractions=(0.1,))
  found = evaluator.evaluate(Predictor(net, batch_size=64))
  images, labels = digits("test")
  out = direct(net, images[:200])
  labels = labels[:200]
  want = {
    "member_accuracy",
    "member_nll",
    "member_0_accuracy",
    "member_2_nll",
    "diversity_disagreement",
    "diversity_average_kl",
    "diversity_cosine_similarity",
    "oracle_accuracy_10pct",
    "accuracy",
  }
  assert {f"val/{k}" for k in want} <= found.keys()
  assert "val/oracle_accuracy_1pct" not in found
  members = metrics.member_metrics(out["logits"], labels, per_member=True)
  for k, v in members.items():
    assert found[f"val/{k}"] == pytest.approx(v, abs=1e-6), k
  diversity = metrics.ensemble_diversity(out["logits"], from_logits=True)
  for k, v in diversity.items():
    assert found[f"val/diversity_{k}"] == pytest.approx(v, abs=1e-6), k
  assert found["val/diversity_disagreement"] > 0  # Bootstrapped heads disagree.
  assert found["val/accuracy"] == pytest.approx(metrics.accuracy(out["probs"], labels))


def test_few_classes_no_top5_and_undefined_calibration_auroc():
  probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]], np.float32)
  outputs = {"probs": probs, "uncertainty": 1 - probs.max(1), "logits": np.log(probs)[:, None]}

  def predict(dataset, split, preprocess=""):
    return outputs, np.array([0, 1, 2])  # All correct: calibration AUROC is undefined.

  found = ClassificationEvaluator("fake", "test").evaluate(predict)
  assert "test/top5_accuracy" not in found
  assert found["test/accuracy"] == 1.0 and np.isnan(found["test/calibration_auroc"])


def test_soft_labels_are_scored_by_their_argmax():
  probs = np.array([[0.7, 0.3], [0.4, 0.6]])
  outputs = {"probs": probs, "uncertainty": 1 - probs.max(1)}
  found = ClassificationEvaluator("fake", "test", oracle_fractions=()).evaluate(
    lambda *a: (outputs, np.array([[0.9, 0.1], [0.8, 0.2]]))
  )
  assert found["test/accuracy"] == 0.5


def test_risk_coverages_name_their_metrics_and_bad_ones_are_refused():
  probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
  outputs = {"probs": probs, "uncertainty": np.array([0.1, 0.4, 0.2, 0.3])}
  evaluator = ClassificationEvaluator("fake", "test", oracle_fractions=(), risk_coverages=(0.5, 1))
  found = evaluator.evaluate(lambda *a: (outputs, np.array([0, 1, 1, 1])))
  # Most certain first: examples 0 (right), 2 (right), 3 (right), 1 (wrong).
  assert found["test/risk_at_50pct_coverage"] == 0.0
  assert found["test/risk_at_100pct_coverage"] == 0.25
  assert "test/risk_at_80pct_coverage" not in found
  for bad in (0.0, 1.2, "0.8", None):
    with pytest.raises(ValueError, match=r"risk_coverages must be numbers in \(0, 1\]"):
      ClassificationEvaluator("fake", "test", risk_coverages=(0.5, bad))
