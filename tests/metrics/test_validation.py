"""Shared input validation of every metric, the OOD sanity warning, and 10^6-example checks."""

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from keras_unc import metrics

# Functions taking (probs [N, C], labels [N]).
PROBS_LABELS = {
  "accuracy": metrics.accuracy,
  "nll": metrics.nll,
  "ece": metrics.expected_calibration_error,
  "brier": metrics.brier_score,
  "calibration_auroc": metrics.calibration_auroc,
  "aurc": metrics.aurc,
  "curve": metrics.accuracy_coverage_curve,
  "oca": lambda p, y: metrics.oracle_collaborative_accuracy(p, y, 0.1),
}
# Functions taking (probs [N, C]) only.
PROBS_ONLY = {
  "msp": metrics.msp_uncertainty,
  "entropy": metrics.entropy,
  "real": lambda p: metrics.real_accuracy(p, [[0]] * len(p)),
  "soft_nll": lambda p: metrics.soft_nll(p, np.full(np.shape(p), 0.5)),
  "ged": lambda p: metrics.generalized_energy_distance(p, np.full(np.shape(p), 0.5)),
}
GOOD = np.array([[0.3, 0.7], [0.9, 0.1], [0.5, 0.5]])
LABELS = np.array([1, 1, 0])


@pytest.mark.parametrize(
  "fn",
  list(PROBS_LABELS.values()) + list(PROBS_ONLY.values()),
  ids=list(PROBS_LABELS) + list(PROBS_ONLY),
)
def test_probs_that_do_not_sum_to_one(fn):
  bad = GOOD.copy()
  bad[1] = [0.5, 0.2]  # Sums to 0.7.
  args = (bad, LABELS) if fn in PROBS_LABELS.values() else (bad,)
  with pytest.raises(
    ValueError,
    match=r"must sum to 1.*1 of 3 row\(s\).*row 1 sums to 0\.7"
    r".*softmax",
  ):
    fn(*args)
  # Within the 1e-3 tolerance is accepted.
  ok = GOOD + np.array([[5e-4, 0.0], [0.0, 0.0], [0.0, -5e-4]])
  fn(*((ok, LABELS) if fn in PROBS_LABELS.values() else (ok,)))


@pytest.mark.parametrize("fn", list(PROBS_LABELS.values()), ids=list(PROBS_LABELS))
def test_probs_labels_errors(fn):
  with pytest.raises(ValueError, match=r"found 1 out-of-range label\(s\), e\.g\. 2"):
    fn(GOOD, np.array([1, 2, 0]))
  with pytest.raises(ValueError, match="same length"):
    fn(GOOD, LABELS[:2])
  with pytest.raises(ValueError, match="non-empty"):
    fn(np.zeros((0, 2)), np.zeros(0, dtype=int))
  with pytest.raises(ValueError, match=r"1 non-finite value\(s\) \(1 NaN, 0 Inf\)"):
    fn(np.array([[np.nan, 0.5], [0.5, 0.5], [0.5, 0.5]]), LABELS)
  with pytest.raises(ValueError, match="logits"):
    fn(np.array([[2.0, -1.0], [0.5, 0.5], [0.5, 0.5]]), LABELS)


def test_low_precision_probs_tolerance():
  # Rows off by 1.1e-3 / 2e-3 after rounding to 16 bits are accepted for 16-bit
  # inputs (tolerance C * eps(dtype)) but not as float64 values.
  p16 = np.array([[0.3337, 0.3337, 0.3337]], dtype=np.float16)
  assert metrics.accuracy(p16, [0]) == 1.0
  with pytest.raises(ValueError, match="must sum to 1"):
    metrics.accuracy(p16.astype(np.float64), [0])
  ml_dtypes = pytest.importorskip("ml_dtypes")
  pbf16 = np.full((1, 3), 1 / 3).astype(ml_dtypes.bfloat16)
  assert abs(float(pbf16.astype(np.float64).sum()) - 1) > 1e-3
  assert metrics.nll(pbf16, [2]) == pytest.approx(-np.log(float(pbf16[0, 2])), rel=1e-12)


@pytest.mark.parametrize(
  "bad, count, nan, inf",
  [
    ([np.nan, 0.2, 0.3, 0.4], 1, 1, 0),
    ([np.inf, -np.inf, 0.3, np.nan], 3, 1, 2),
  ],
)
def test_non_finite_scores_are_counted(bad, count, nan, inf):
  msg = rf"{count} non-finite value\(s\) \({nan} NaN, {inf} Inf\)"
  positives = [0, 1, 0, 1]
  for fn in (metrics.auroc, metrics.average_precision, metrics.fpr_at_tpr):
    with pytest.raises(ValueError, match="scores contain " + msg):
      fn(bad, positives)
  with pytest.raises(ValueError, match="scores_out contain " + msg):
    metrics.ood_metrics([0.1, 0.2], bad)
  probs = np.full((4, 2), 0.5)
  with pytest.raises(ValueError, match="uncertainty contain " + msg):
    metrics.aurc(probs, [0, 1, 0, 1], bad)
  with pytest.raises(ValueError, match="uncertainty contain " + msg):
    metrics.calibration_auroc(probs, [0, 1, 0, 1], bad)


def test_mismatched_lengths_and_empty_inputs():
  with pytest.raises(ValueError, match="same length"):
    metrics.auroc([0.1, 0.2, 0.3], [0, 1])
  with pytest.raises(ValueError, match="must not be empty"):
    metrics.auroc([], [])
  with pytest.raises(ValueError, match="scores_in must not be empty"):
    metrics.ood_metrics([], [0.1])
  with pytest.raises(ValueError, match=r"uncertainty must have shape \(3,\)"):
    metrics.oracle_collaborative_accuracy(GOOD, LABELS, 0.5, [0.1, 0.2])
  with pytest.raises(ValueError, match="non-empty"):
    metrics.recall_at_one(np.zeros((0, 3)), [])
  with pytest.raises(ValueError, match="labels must have the same length"):
    metrics.member_metrics(np.zeros((3, 2, 4)), [0, 1])


def test_ood_identical_sets_warn():
  scores = np.random.default_rng(1).random(50)
  with pytest.warns(UserWarning, match="identical to the in-distribution"):
    out = metrics.ood_metrics(scores, scores.copy())
  assert out["auroc"] == 0.5  # Legal, but meaningless.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    metrics.ood_metrics(scores, scores[::-1].copy())  # Same values, other order: no warning.
    metrics.ood_metrics(scores, scores[:-1])
    # Constant scores (e.g. an untrained zero head) are not evidence of equal sets.
    assert metrics.ood_metrics(np.zeros(5), np.zeros(5))["auroc"] == 0.5


def _ece_digitize(probs, labels, num_bins=15):
  """Independent ECE: np.digitize(right=True) on the inner edges."""
  conf = probs.max(axis=1).astype(np.float64)
  correct = probs.argmax(axis=1) == labels
  idx = np.digitize(conf, np.linspace(0, 1, num_bins + 1)[1:-1], right=True)
  total = 0.0
  for b in range(num_bins):
    sel = idx == b
    if sel.any():
      total += sel.sum() * abs(correct[sel].mean() - conf[sel].mean())
  return total / len(labels)


def test_million_examples_ece_and_auroc():
  rng = np.random.default_rng(2)
  n, c = 1_000_000, 5
  logits = rng.normal(scale=2.0, size=(n, c)).astype(np.float32)
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  probs /= probs.sum(axis=1, keepdims=True)
  labels = rng.integers(0, c, size=n)
  assert metrics.expected_calibration_error(probs, labels) == pytest.approx(
    _ece_digitize(probs, labels), abs=1e-10
  )
  wrong = probs.argmax(axis=1) != labels
  unc = np.round(1.0 - probs.max(axis=1), 3)  # Ties.
  assert metrics.calibration_auroc(probs, labels, unc) == pytest.approx(
    skm.roc_auc_score(wrong, unc), abs=1e-12
  )
