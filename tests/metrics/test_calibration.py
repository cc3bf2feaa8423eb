"""Tests for keras_unc.metrics.calibration (independent reference computations)."""

import inspect

import numpy as np
import pytest
from sklearn import metrics as skm

from keras_unc.metrics import (
  accuracy,
  brier_score,
  calibration_auroc,
  calibration_bins,
  entropy,
  expected_calibration_error,
  msp_uncertainty,
  nll,
  top_k_accuracy,
)


def _random_probs(rng, n, c, dtype=np.float64):
  logits = rng.normal(scale=2.0, size=(n, c))
  p = np.exp(logits - logits.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  labels = rng.integers(0, c, size=n)
  return p.astype(dtype), labels


def _ece_loop(probs, labels, num_bins):
  """Reference ECE: explicit loop over bins, interval test per bin."""
  probs = np.asarray(probs, dtype=np.float64)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  conf = probs.max(axis=1)
  correct = probs.argmax(axis=1) == labels
  n = len(labels)
  total = 0.0
  for b in range(num_bins):
    lo, hi = edges[b], edges[b + 1]
    in_bin = (conf > lo) & (conf <= hi)
    if b == 0:
      in_bin |= conf == 0.0
    if in_bin.sum() == 0:
      continue
    total += in_bin.sum() / n * abs(correct[in_bin].mean() - conf[in_bin].mean())
  return total


# ---------------------------------------------------------------------------
# accuracy / top-k
# ---------------------------------------------------------------------------


def test_accuracy_and_top_k():
  probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.3, 0.4, 0.3], [0.6, 0.3, 0.1]])
  labels = np.array([0, 1, 2, 2])
  # argmax: 0, 2, 1, 0 -> correct only the first.
  assert accuracy(probs, labels) == 0.25
  # top-2 sets: {0,1}, {2,1}, {1, 0 (tie with 2, lower index wins)}, {0,1}
  assert top_k_accuracy(probs, labels, 1) == 0.25
  assert top_k_accuracy(probs, labels, 2) == 0.5
  assert top_k_accuracy(probs, labels, 3) == 1.0


def test_top_k_matches_sklearn_without_ties():
  rng = np.random.default_rng(0)
  probs, labels = _random_probs(rng, 500, 10)
  for k in (1, 3, 5):
    expected = skm.top_k_accuracy_score(labels, probs, k=k, labels=range(10))
    assert top_k_accuracy(probs, labels, k) == pytest.approx(expected, abs=1e-15)
  assert top_k_accuracy(probs, labels, 1) == accuracy(probs, labels)


@pytest.mark.parametrize("k", [0, 4, 1.0, True])
def test_top_k_invalid_k(k):
  with pytest.raises(ValueError, match="k must be"):
    top_k_accuracy(np.full((2, 3), 1 / 3), np.array([0, 1]), k)


# ---------------------------------------------------------------------------
# ECE and bins
# ---------------------------------------------------------------------------


def test_ece_hand_computed_four_examples():
  # conf / correct / bin (B=15, width 1/15):
  #   0.90 correct -> 13.5  -> bin 13
  #   0.92 wrong   -> 13.8  -> bin 13
  #   0.62 correct -> 9.3   -> bin 9
  #   0.55 wrong   -> 8.25  -> bin 8
  # bin 13: n=2, acc=0.5, conf=0.91 -> 2/4 * 0.41 = 0.205
  # bin  9: n=1, acc=1.0, conf=0.62 -> 1/4 * 0.38 = 0.095
  # bin  8: n=1, acc=0.0, conf=0.55 -> 1/4 * 0.55 = 0.1375
  # ECE = 0.205 + 0.095 + 0.1375 = 0.4375
  probs = np.array([[0.90, 0.10], [0.08, 0.92], [0.62, 0.38], [0.55, 0.45]])
  labels = np.array([0, 0, 0, 1])
  assert expected_calibration_error(probs, labels) == pytest.approx(0.4375, abs=1e-12)
  # One bin: |mean acc - mean conf| = |0.5 - 2.99/4| = 0.2475
  assert expected_calibration_error(probs, labels, num_bins=1) == pytest.approx(0.2475, abs=1e-12)
  bins = calibration_bins(probs, labels)
  assert bins.counts.tolist() == [0] * 8 + [1, 1, 0, 0, 0, 2, 0]
  assert bins.accuracy[13] == 0.5 and bins.confidence[13] == pytest.approx(0.91)
  assert np.isnan(bins.accuracy[0]) and np.isnan(bins.confidence[14])


@pytest.mark.parametrize("num_bins", [1, 10, 15, 20])
def test_ece_matches_loop_random(num_bins):
  rng = np.random.default_rng(num_bins)
  probs, labels = _random_probs(rng, 2000, 5)
  # Make accuracy correlated with confidence so the value is non-trivial.
  labels = np.where(rng.random(2000) < 0.6, probs.argmax(axis=1), labels)
  got = expected_calibration_error(probs, labels, num_bins=num_bins)
  assert got == pytest.approx(_ece_loop(probs, labels, num_bins), abs=1e-12)


def test_ece_float32_input_and_empty_bins():
  rng = np.random.default_rng(1)
  probs, labels = _random_probs(rng, 300, 4, dtype=np.float32)
  got = expected_calibration_error(probs, labels)
  assert isinstance(got, float)
  assert got == pytest.approx(_ece_loop(probs, labels, 15), abs=1e-12)
  # All confidences in one bin -> 14 empty bins contribute nothing.
  probs = np.array([[0.7, 0.3]] * 4)
  labels = np.array([0, 0, 0, 1])  # acc 0.75, conf 0.7
  assert expected_calibration_error(probs, labels) == pytest.approx(0.05, abs=1e-12)
  assert calibration_bins(probs, labels).counts.sum() == 4


def test_ece_bin_edges_and_extremes():
  edges = np.linspace(0.0, 1.0, 16)
  assert edges[3] == 0.2  # documented float64 edge value for B=15
  # Uniform over 5 classes: confidence exactly 0.2 == edges[3] -> bin 2
  # (right-closed (2/15, 3/15]).  Confidence exactly 1.0 -> last bin.
  # Confidence 0.5 -> 7.5 -> bin 7.
  probs = np.array([[0.2] * 5, [1.0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0], [edges[12], 0.2, 0, 0, 0]])
  labels = np.array([3, 0, 2, 0])
  bins = calibration_bins(probs, labels)
  expected_counts = np.zeros(15, dtype=int)
  expected_counts[[2, 14, 7, 11]] = 1  # edges[12] = 0.8 goes in bin 11
  np.testing.assert_array_equal(bins.counts, expected_counts)
  np.testing.assert_array_equal(bins.edges, edges)
  # correct: argmax of uniform is 0 != 3 (wrong); row 2 correct; [0.5, 0.5]
  # argmax 0 != 2 (wrong); row 4 correct.
  # ECE = 1/4 * (|0 - 0.2| + |1 - 1| + |0 - 0.5| + |1 - 0.8|) = 0.225
  assert expected_calibration_error(probs, labels) == pytest.approx(0.225, abs=1e-12)
  assert expected_calibration_error(probs, labels) == pytest.approx(
    _ece_loop(probs, labels, 15), abs=1e-15
  )
  # An all-zero row is not a probability vector.
  with pytest.raises(ValueError, match="must sum to 1"):
    expected_calibration_error(np.zeros((2, 5)), np.array([0, 1]))


def test_ece_perfect_and_invalid_bins():
  probs = np.eye(3)
  assert expected_calibration_error(probs, np.arange(3)) == 0.0
  with pytest.raises(ValueError, match="num_bins"):
    expected_calibration_error(probs, np.arange(3), num_bins=0)


# ---------------------------------------------------------------------------
# NLL / Brier
# ---------------------------------------------------------------------------


def _sk_log_loss(labels, probs, c):
  if "y_proba" in inspect.signature(skm.log_loss).parameters:
    return skm.log_loss(labels, y_proba=probs, labels=list(range(c)))
  return skm.log_loss(labels, probs, labels=list(range(c)))


def test_nll_matches_sklearn():
  rng = np.random.default_rng(2)
  probs, labels = _random_probs(rng, 1000, 7)
  expected = _sk_log_loss(labels, probs, 7)
  assert nll(probs, labels) == pytest.approx(expected, rel=1e-10)
  # float32 input computed in float64: compare against float64 of same values
  p32 = probs.astype(np.float32)
  hand = -np.mean(np.log(p32.astype(np.float64)[np.arange(1000), labels]))
  assert nll(p32, labels) == pytest.approx(hand, rel=1e-12)


def test_nll_zero_probability_is_finite():
  probs = np.array([[1.0, 0.0], [0.5, 0.5]])
  labels = np.array([1, 0])
  got = nll(probs, labels)
  # (-log(1e-12) - log(0.5)) / 2 = (27.631021115928547 + 0.6931471805599453) / 2
  assert got == pytest.approx(14.162084148244246, rel=1e-12)
  assert nll(probs, labels, eps=1e-6) == pytest.approx((-np.log(1e-6) + np.log(2)) / 2, rel=1e-12)


def test_brier_score():
  rng = np.random.default_rng(3)
  probs, labels = _random_probs(rng, 400, 6)
  onehot = np.zeros_like(probs)
  for i, y in enumerate(labels):
    onehot[i, y] = 1.0
  expected = np.mean(np.sum((probs - onehot) ** 2, axis=1))
  assert brier_score(probs, labels) == pytest.approx(expected, rel=1e-12)
  # Hand case: [0.7, 0.3] label 0 -> 0.09 + 0.09 = 0.18; [0.4, 0.6] label 0
  # -> 0.36 + 0.36 = 0.72; mean = 0.45
  assert brier_score(np.array([[0.7, 0.3], [0.4, 0.6]]), np.array([0, 0])) == (
    pytest.approx(0.45, abs=1e-12)
  )


# ---------------------------------------------------------------------------
# uncertainty scores and calibration AUROC
# ---------------------------------------------------------------------------


def test_msp_and_entropy():
  probs = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.25, 0.25, 0.5]])
  np.testing.assert_allclose(msp_uncertainty(probs), [0.5, 0.0, 0.5])
  # ln2; 0; -(2 * 0.25 ln 0.25 + 0.5 ln 0.5) = 1.5 ln 2
  np.testing.assert_allclose(entropy(probs), [np.log(2), 0.0, 1.5 * np.log(2)], rtol=1e-12, atol=0)
  assert np.all(np.isfinite(entropy(probs)))


def test_calibration_auroc_matches_sklearn():
  rng = np.random.default_rng(4)
  probs, _ = _random_probs(rng, 600, 4)
  pred = probs.argmax(axis=1)
  conf = probs.max(axis=1)
  # Wrong with probability (1 - conf): an informative constructed case.
  wrong = rng.random(600) > conf
  labels = np.where(wrong, (pred + 1) % 4, pred)
  expected = skm.roc_auc_score(wrong.astype(int), 1.0 - conf)
  assert calibration_auroc(probs, labels) == pytest.approx(expected, abs=1e-12)
  assert 0.5 < expected < 1.0
  # Custom uncertainty (entropy) also matches sklearn.
  ent = -np.sum(probs * np.log(probs), axis=1)
  assert calibration_auroc(probs, labels, uncertainty=ent) == pytest.approx(
    skm.roc_auc_score(wrong.astype(int), ent), abs=1e-12
  )


def test_calibration_auroc_errors():
  probs = np.eye(3)
  with pytest.raises(ValueError, match="0 wrong and 3 correct"):
    calibration_auroc(probs, np.arange(3))
  with pytest.raises(ValueError, match="uncertainty must have shape"):
    calibration_auroc(probs, np.array([1, 0, 2]), uncertainty=np.zeros(2))


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "probs, labels, match",
  [
    (np.array([0.5, 0.5]), np.array([0, 1]), "probs must be 2-D"),
    (np.zeros((0, 3)), np.zeros(0, dtype=int), "non-empty"),
    (np.full((2, 2), 0.5), np.array([[0], [1]]), "labels must be 1-D"),
    (np.full((2, 2), 0.5), np.array([0, 1, 1]), "same length"),
    (np.full((2, 2), 0.5), np.array([0, 2]), r"labels must be in \[0, 2\)"),
    (np.full((2, 2), 0.5), np.array([-1, 0]), r"labels must be in \[0, 2\)"),
    (np.full((2, 2), 0.5), np.array([0.5, 1.0]), "non-integer"),
    (np.full((2, 2), 0.5), np.array(["a", "b"]), "dtype"),
    (np.array([[np.nan, 0.5], [0.5, 0.5]]), np.array([0, 1]), "non-finite"),
    (np.array([[3.0, -1.0], [0.5, 0.5]]), np.array([0, 1]), r"\[0, 1\]"),
  ],
)
def test_validation_errors(probs, labels, match):
  for fn in (accuracy, expected_calibration_error, nll, brier_score):
    with pytest.raises(ValueError, match=match):
      fn(probs, labels)


def test_integral_float_labels_accepted():
  probs = np.array([[0.9, 0.1], [0.2, 0.8]])
  assert accuracy(probs, np.array([0.0, 1.0])) == 1.0
