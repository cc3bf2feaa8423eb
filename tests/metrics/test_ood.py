"""Tests for keras_unc.metrics.{ranking, ood} against sklearn and brute force."""

import numpy as np
import pytest
from sklearn import metrics as skm

from keras_unc.metrics import auroc, average_precision, fpr_at_tpr, ood_metrics


def _pairwise_auroc(scores, positives):
  """Brute-force P(s+ > s-) + 0.5 P(s+ == s-) over all pairs."""
  pos = scores[positives.astype(bool)][:, None]
  neg = scores[~positives.astype(bool)][None, :]
  return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def _sk_fpr_at_tpr(positives, scores, target):
  fpr, tpr, _ = skm.roc_curve(positives, scores, drop_intermediate=False)
  return fpr[np.argmax(tpr >= target)]


def _random_binary(seed, n, ties=False):
  rng = np.random.default_rng(seed)
  positives = rng.random(n) < 0.3
  scores = rng.normal(size=n) + 0.8 * positives
  if ties:
    scores = np.round(scores, 1)
  return scores, positives


# ---------------------------------------------------------------------------
# AUROC
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn_and_pairwise(seed, ties):
  scores, positives = _random_binary(seed, 1500, ties=ties)
  got = auroc(scores, positives)
  assert isinstance(got, float)
  assert got == pytest.approx(skm.roc_auc_score(positives, scores), abs=1e-12)
  assert got == pytest.approx(_pairwise_auroc(scores, positives), abs=1e-12)


def test_auroc_heavy_ties_integer_labels_float32():
  rng = np.random.default_rng(5)
  scores = rng.integers(0, 4, size=3000).astype(np.float32)  # 4 distinct values
  positives = (rng.random(3000) < 0.5 + 0.1 * scores).astype(np.int64)
  got = auroc(scores, positives)
  assert got == pytest.approx(skm.roc_auc_score(positives, scores), abs=1e-12)
  assert got == pytest.approx(_pairwise_auroc(scores, positives), abs=1e-12)


def test_auroc_hand_and_constant():
  # pos {3, 2}, neg {2, 1}: pairs (3>2),(3>1),(2=2 -> 1/2),(2>1) = 3.5/4
  assert auroc([3, 2, 2, 1], [1, 1, 0, 0]) == 0.875
  assert auroc(np.full(10, 0.3), np.arange(10) % 2) == 0.5
  assert auroc([1.0, 2.0], [True, False]) == 0.0
  with pytest.raises(ValueError, match="2 non-finite value.*0 NaN, 2 Inf"):
    auroc([-np.inf, np.inf], [0, 1])


def test_auroc_million_examples():
  rng = np.random.default_rng(6)
  n = 1_000_000
  positives = rng.random(n) < 0.1
  scores = np.round(rng.normal(size=n) + positives, 3)  # many ties as well
  got = auroc(scores, positives)
  assert got == pytest.approx(skm.roc_auc_score(positives, scores), abs=1e-9)


def test_auroc_errors():
  with pytest.raises(ValueError, match="3 positive\\(s\\) and 0 negative"):
    auroc([0.1, 0.2, 0.3], [1, 1, 1])
  with pytest.raises(ValueError, match="0 positive\\(s\\) and 2 negative"):
    auroc([0.1, 0.2], [False, False])
  with pytest.raises(ValueError, match="same length"):
    auroc([0.1, 0.2, 0.3], [0, 1])
  with pytest.raises(ValueError, match="0/1"):
    auroc([0.1, 0.2], [0, 2])
  with pytest.raises(ValueError, match="NaN"):
    auroc([np.nan, 0.2], [0, 1])
  with pytest.raises(ValueError, match="1-D"):
    auroc(np.zeros((2, 2)), np.zeros((2, 2)))


# ---------------------------------------------------------------------------
# Average precision / FPR at TPR
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_sklearn(ties):
  for seed in range(3):
    scores, positives = _random_binary(10 + seed, 2000, ties=ties)
    expected = skm.average_precision_score(positives, scores)
    assert average_precision(scores, positives) == pytest.approx(expected, abs=1e-12)


def test_average_precision_hand_and_errors():
  # thresholds 0.9: (tp1, fp0) P=1 R=.5; 0.5 tie group: tp2 fp2 P=.5 R=1
  # AP = .5 * 1 + .5 * .5 = 0.75
  assert average_precision([0.9, 0.5, 0.5, 0.5], [1, 1, 0, 0]) == 0.75
  assert average_precision([0.9, 0.5, 0.5, 0.5], [1, 1, 0, 0]) == pytest.approx(
    skm.average_precision_score([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.5])
  )
  assert average_precision([0.2, 0.4], [1, 1]) == 1.0
  with pytest.raises(ValueError, match="without positives"):
    average_precision([0.1, 0.2], [0, 0])


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("target", [0.0, 0.5, 0.8, 0.95, 1.0])
def test_fpr_at_tpr_matches_roc_curve(ties, target):
  scores, positives = _random_binary(20, 1000, ties=ties)
  expected = _sk_fpr_at_tpr(positives, scores, target)
  assert fpr_at_tpr(scores, positives, target) == expected


def test_fpr_at_tpr_hand_and_errors():
  # positives {0.9, 0.8, 0.3, 0.1 ...}: 20 positives with distinct high scores
  # except one low; negatives at 0.5 and 0.05.
  scores = np.r_[np.linspace(1.0, 0.6, 19), 0.2, 0.5, 0.5, 0.05, 0.05]
  positives = np.r_[np.ones(20), np.zeros(4)]
  # TPR reaches 19/20 = 0.95 at threshold 0.6 with no negatives above -> 0.
  assert fpr_at_tpr(scores, positives) == 0.0
  # TPR 1.0 needs threshold 0.2 -> negatives 0.5, 0.5 above -> 2/4.
  assert fpr_at_tpr(scores, positives, 1.0) == 0.5
  with pytest.raises(ValueError, match="tpr must be in"):
    fpr_at_tpr(scores, positives, 1.5)
  with pytest.raises(ValueError, match="one class"):
    fpr_at_tpr([0.1, 0.2], [1, 1])


# ---------------------------------------------------------------------------
# ood_metrics
# ---------------------------------------------------------------------------


def test_ood_metrics_against_sklearn():
  rng = np.random.default_rng(30)
  scores_in = np.round(rng.normal(size=700), 2).astype(np.float32)
  scores_out = np.round(rng.normal(loc=1.0, size=300), 2).astype(np.float32)
  out = ood_metrics(scores_in, scores_out)
  assert set(out) == {"auroc", "aupr_out", "aupr_in", "fpr95"}
  assert all(isinstance(v, float) for v in out.values())

  s = np.concatenate([scores_in, scores_out]).astype(np.float64)
  y_out = np.r_[np.zeros(700, int), np.ones(300, int)]
  assert out["auroc"] == pytest.approx(skm.roc_auc_score(y_out, s), abs=1e-12)
  assert out["aupr_out"] == pytest.approx(skm.average_precision_score(y_out, s), abs=1e-12)
  # In-distribution as the positive class (label 0 here), scores negated.
  assert out["aupr_in"] == pytest.approx(
    skm.average_precision_score(y_out, -s, pos_label=0), abs=1e-12
  )
  assert out["fpr95"] == _sk_fpr_at_tpr(y_out, s, 0.95)
  assert 0.5 < out["auroc"] < 1.0


def test_ood_metrics_perfect_separation_and_errors():
  out = ood_metrics([0.0, 0.1, 0.2], [0.8, 0.9])
  assert out == {"auroc": 1.0, "aupr_out": 1.0, "aupr_in": 1.0, "fpr95": 0.0}
  with pytest.raises(ValueError, match="scores_out must not be empty"):
    ood_metrics([0.1], [])
  with pytest.raises(ValueError, match="scores_in must be 1-D"):
    ood_metrics(np.zeros((2, 2)), [0.1])
