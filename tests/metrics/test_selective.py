"""Tests for keras_unc.metrics.selective against loops and brute-force tie averaging."""

import itertools

import numpy as np
import pytest

from keras_unc.metrics import accuracy_coverage_curve, aurc, oracle_collaborative_accuracy


def _random_case(seed, n, c=4, ties=False):
  rng = np.random.default_rng(seed)
  logits = rng.normal(scale=2.0, size=(n, c))
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  probs /= probs.sum(axis=1, keepdims=True)
  pred = probs.argmax(axis=1)
  # Wrong with probability 1 - confidence: uncertainty is informative.
  wrong = rng.random(n) > probs.max(axis=1)
  labels = np.where(wrong, (pred + 1) % c, pred)
  unc = rng.random(n)
  if ties:
    unc = np.round(unc, 1)
  return probs, labels, unc


def _curve_loop(correct, unc):
  """No ties: accuracy of the k least uncertain, one k at a time."""
  order = np.argsort(unc)
  return np.array([correct[order[:k]].mean() for k in range(1, len(unc) + 1)])


def _curve_all_orders(correct, unc):
  """Brute force: average the curve over every order consistent with unc."""
  curves = []
  for perm in itertools.permutations(range(len(unc))):
    perm = np.array(perm)
    if np.all(np.diff(unc[perm]) >= 0):
      c = correct[perm]
      curves.append(np.cumsum(c) / np.arange(1, len(c) + 1))
  return np.mean(curves, axis=0)


def test_curve_and_aurc_without_ties():
  probs, labels, unc = _random_case(0, 500)
  correct = (probs.argmax(axis=1) == labels).astype(float)
  cov, acc = accuracy_coverage_curve(probs, labels, unc)
  np.testing.assert_allclose(cov, np.arange(1, 501) / 500, rtol=0, atol=0)
  np.testing.assert_allclose(acc, _curve_loop(correct, unc), rtol=0, atol=1e-12)
  # Geifman et al.: AURC = mean over k of the selective risk.
  risks = [1.0 - correct[np.argsort(unc)[:k]].mean() for k in range(1, 501)]
  assert aurc(probs, labels, unc) == pytest.approx(np.mean(risks), abs=1e-12)


def test_default_uncertainty_is_msp():
  probs, labels, _ = _random_case(1, 300)
  assert aurc(probs, labels) == pytest.approx(aurc(probs, labels, 1.0 - probs.max(axis=1)), abs=0)
  assert oracle_collaborative_accuracy(probs, labels, 0.1) == pytest.approx(
    oracle_collaborative_accuracy(probs, labels, 0.1, 1.0 - probs.max(axis=1)), abs=0
  )


def test_curve_ties_equal_expectation_over_orders():
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.45, 0.55], [0.5, 0.5]])
  labels = np.array([0, 0, 0, 1, 1, 1])
  unc = np.array([0.3, 0.1, 0.3, 0.1, 0.3, 0.7])  # Two tie groups of 3 and 2... and one.
  correct = (probs.argmax(axis=1) == labels).astype(float)
  _, acc = accuracy_coverage_curve(probs, labels, unc)
  np.testing.assert_allclose(acc, _curve_all_orders(correct, unc), atol=1e-12)
  # Independent of the input order.
  perm = np.array([5, 3, 0, 4, 1, 2])
  np.testing.assert_allclose(
    accuracy_coverage_curve(probs[perm], labels[perm], unc[perm])[1], acc, atol=1e-15
  )


def test_constant_uncertainty_gives_flat_curve():
  probs, labels, _ = _random_case(2, 200)
  acc_all = np.mean(probs.argmax(axis=1) == labels)
  _, acc = accuracy_coverage_curve(probs, labels, np.zeros(200))
  np.testing.assert_allclose(acc, acc_all, atol=1e-12)
  assert aurc(probs, labels, np.zeros(200)) == pytest.approx(1 - acc_all, abs=1e-12)


def test_aurc_hand_and_optimal():
  # Least uncertain first: correct, wrong, correct -> risks 0, 1/2, 1/3.
  probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
  labels = np.array([0, 1, 1])
  unc = np.array([0.0, 0.5, 0.9])
  assert aurc(probs, labels, unc) == pytest.approx((0 + 1 / 2 + 1 / 3) / 3, abs=1e-15)
  # Optimal ranking (all errors last) with e errors of N: risk_k = (k-(N-e))/k.
  rng = np.random.default_rng(3)
  n, e = 50, 12
  labels = np.zeros(n, dtype=int)
  labels[n - e :] = 1
  probs = np.tile([0.8, 0.2], (n, 1))
  unc = np.arange(n, dtype=float)
  perm = rng.permutation(n)
  expected = np.mean([max(0, k - (n - e)) / k for k in range(1, n + 1)])
  assert aurc(probs[perm], labels[perm], unc[perm]) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("fraction", [0.0, 0.005, 0.05, 0.29, 0.5, 1.0])
def test_oracle_collaborative_accuracy_brute_force(ties, fraction):
  probs, labels, unc = _random_case(4, 100, ties=ties)
  correct = (probs.argmax(axis=1) == labels).astype(float)
  n_oracle = {0.0: 0, 0.005: 0, 0.05: 5, 0.29: 29, 0.5: 50, 1.0: 100}[fraction]
  got = oracle_collaborative_accuracy(probs, labels, fraction, unc)
  if not ties:
    order = np.argsort(-unc)
    expected = (n_oracle + correct[order[n_oracle:]].sum()) / 100
  else:
    # Partly sent tie group: expected value over random tie breaking.
    u_cut = np.sort(unc)[::-1][n_oracle - 1] if n_oracle else np.inf
    above, tied = unc > u_cut, unc == u_cut
    k_tied = n_oracle - above.sum()
    rest_tied = tied.sum() - k_tied
    expected = (
      n_oracle
      + correct[unc < u_cut].sum()
      + rest_tied * (correct[tied].mean() if tied.any() else 0)
    ) / 100
  assert got == pytest.approx(expected, abs=1e-12)


def test_oracle_collaborative_accuracy_matches_binned_reference_case():
  # The uncertainty_metrics OracleCollaborativeAccuracy test case (binary,
  # 10 bins, fraction 0.4 of 8 -> 3 examples): bins of confidence become tie
  # groups here, which gives its expected value (2 + 1 + 2 * 2/3 + 0 + 2) / 8.
  x = np.array([0.51, 0.45, 0.39, 0.66, 0.68, 0.29, 0.81, 0.85])
  probs = np.stack([1 - x, x], axis=1)
  labels = np.array([0, 0, 0, 1, 0, 1, 1, 1])
  conf = probs.max(axis=1)
  unc_bins = -np.floor(conf * 10)
  expected = (2 + 1 + 2 * 2 / 3 + 0 + 2) / 8
  assert oracle_collaborative_accuracy(probs, labels, 0.4, unc_bins) == pytest.approx(
    expected, abs=1e-12
  )
  # Exact per-example order: the three least confident (0.51, 0.55, 0.61) go
  # to the oracle; of the rest 0.66, 0.81, 0.85 are correct -> 6 / 8.
  assert oracle_collaborative_accuracy(probs, labels, 0.4) == 0.75


def test_oracle_fraction_errors():
  probs, labels, _ = _random_case(5, 10)
  for bad in (-0.1, 1.5, "0.1", None, True):
    with pytest.raises(ValueError, match="fraction must be"):
      oracle_collaborative_accuracy(probs, labels, bad)
  assert oracle_collaborative_accuracy(probs, labels, 1) == 1.0
