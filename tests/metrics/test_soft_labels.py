"""Tests for soft-label metrics (SciPy / NumPy references)."""

import numpy as np
import pytest
from scipy import special, stats

from keras_unc.metrics import (
  generalized_energy_distance,
  kl_to_labels,
  nll,
  real_accuracy,
  soft_nll,
  spearman_uncertainty_vs_label_entropy,
)


def _dists(seed, n, c, sparse=False):
  rng = np.random.default_rng(seed)
  p = rng.dirichlet(np.full(c, 0.7), size=n)
  if sparse:  # Vote frequencies of 5 annotators: many exact zeros.
    votes = rng.integers(0, c, size=(n, 5))
    p = np.stack([np.bincount(v, minlength=c) for v in votes]) / 5.0
  return p


def test_soft_nll_and_kl_match_scipy():
  probs = _dists(0, 300, 6)
  q = _dists(1, 300, 6, sparse=True)
  expected_nll = np.mean(-np.sum(special.xlogy(q, probs), axis=1))
  assert soft_nll(probs, q) == pytest.approx(expected_nll, rel=1e-12)
  expected_kl = np.mean(stats.entropy(q, probs, axis=1))  # KL(q || p)
  assert kl_to_labels(probs, q) == pytest.approx(expected_kl, rel=1e-12)
  # KL = cross-entropy - entropy of q.
  assert kl_to_labels(probs, q) == pytest.approx(
    soft_nll(probs, q) - np.mean(stats.entropy(q, axis=1)), rel=1e-12
  )


def test_soft_nll_with_one_hot_labels_is_nll():
  probs = _dists(2, 100, 4)
  labels = np.random.default_rng(3).integers(0, 4, size=100)
  assert soft_nll(probs, np.eye(4)[labels]) == pytest.approx(nll(probs, labels), rel=1e-12)
  assert kl_to_labels(probs, np.eye(4)[labels]) == pytest.approx(nll(probs, labels), rel=1e-12)
  assert kl_to_labels(probs, probs) == pytest.approx(0.0, abs=1e-12)


def test_real_accuracy_sets_and_multi_hot():
  probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.4, 0.4, 0.2]])
  sets = [[0, 2], [], np.array([1]), [1, 0]]  # argmax: 0, 1, 2, 0 (tie -> 0)
  # Example 1 skipped (empty); hits: yes, no, yes -> 2/3.
  assert real_accuracy(probs, sets) == pytest.approx(2 / 3, abs=1e-15)
  multi_hot = np.zeros((4, 3), dtype=int)
  for i, s in enumerate(sets):
    multi_hot[i, np.asarray(s, dtype=int)] = 1
  assert real_accuracy(probs, multi_hot) == pytest.approx(2 / 3, abs=1e-15)
  assert real_accuracy(probs, multi_hot.astype(bool)) == pytest.approx(2 / 3, abs=1e-15)


def test_real_accuracy_errors():
  probs = np.full((2, 3), 1 / 3)
  with pytest.raises(ValueError, match="every label set is empty"):
    real_accuracy(probs, [[], []])
  with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
    real_accuracy(probs, [[0], [3]])
  with pytest.raises(ValueError, match="one entry per example"):
    real_accuracy(probs, [[0]])
  with pytest.raises(ValueError, match="shape"):
    real_accuracy(probs, np.zeros((2, 4), dtype=bool))
  with pytest.raises(ValueError, match="only 0/1"):
    real_accuracy(probs, np.full((2, 3), 2))


def _ged_brute_force(p_members, q):
  """Class draws with d(a, b) = [a != b]; y_hat ~ uniform member, then its class."""
  n, m, c = p_members.shape
  diff = 1.0 - np.eye(c)
  total = 0.0
  for i in range(n):
    e_y_yhat = np.mean([q[i] @ diff @ p_members[i, a] for a in range(m)])
    e_y_y = q[i] @ diff @ q[i]
    e_yhat_yhat = np.mean(
      [p_members[i, a] @ diff @ p_members[i, b] for a in range(m) for b in range(m)]
    )
    total += 2 * e_y_yhat - e_y_y - e_yhat_yhat
  return total / n


def test_generalized_energy_distance_definitions():
  q = _dists(4, 50, 5, sparse=True)
  p = _dists(5, 50, 5)
  got = generalized_energy_distance(p, q)
  assert got == pytest.approx(_ged_brute_force(p[:, None], q), abs=1e-12)
  assert got == pytest.approx(np.mean(np.sum((q - p) ** 2, axis=1)), abs=1e-12)
  # uncertainty-baselines' tensor form, mirrored in NumPy.
  non_diag = 1.0 - np.eye(5)
  dist = np.einsum("nc,cd,nd->n", q, non_diag, p)
  ldiv = np.einsum("nc,cd,nd->n", q, non_diag, q)
  sdiv = np.einsum("nc,cd,nd->n", p, non_diag, p)
  comps = generalized_energy_distance(p, q, return_components=True)
  assert comps["ged"] == pytest.approx(np.mean(2 * dist - ldiv - sdiv), abs=1e-12)
  assert comps["label_diversity"] == pytest.approx(ldiv.mean(), abs=1e-12)
  assert comps["sample_diversity"] == pytest.approx(sdiv.mean(), abs=1e-12)
  assert comps["distance"] == pytest.approx(dist.mean(), abs=1e-12)
  assert generalized_energy_distance(q, q) == pytest.approx(0.0, abs=1e-15)


def test_generalized_energy_distance_members_and_samples():
  q = _dists(6, 30, 4)
  members = np.stack([_dists(7 + m, 30, 4) for m in range(3)], axis=1)  # [N, M, C]
  assert generalized_energy_distance(members, q) == pytest.approx(
    _ged_brute_force(members, q), abs=1e-12
  )
  # One-hot samples: the mixture is the empirical sample frequency.
  rng = np.random.default_rng(8)
  samples = np.eye(4)[rng.integers(0, 4, size=(30, 7))]
  assert generalized_energy_distance(samples, q) == pytest.approx(
    _ged_brute_force(samples, q), abs=1e-12
  )


def test_spearman_matches_scipy_with_ties():
  rng = np.random.default_rng(9)
  q = _dists(10, 400, 4, sparse=True)  # Many tied entropies (incl. permutations).
  q_entropy = stats.entropy(q, axis=1)
  unc = np.round(q_entropy + rng.normal(scale=0.3, size=400), 1)  # Tied too.
  expected = stats.spearmanr(unc, np.round(q_entropy, 12)).statistic
  assert spearman_uncertainty_vs_label_entropy(unc, q) == pytest.approx(expected, abs=1e-12)
  assert 0.3 < expected < 1.0


def test_spearman_constant_and_errors():
  q = _dists(11, 20, 3)
  with pytest.raises(ValueError, match="uncertainty is constant"):
    spearman_uncertainty_vs_label_entropy(np.ones(20), q)
  with pytest.raises(ValueError, match="soft-label entropy is constant"):
    spearman_uncertainty_vs_label_entropy(np.arange(20.0), np.tile([1.0, 0, 0], (20, 1)))
  with pytest.raises(ValueError, match="uncertainty must have shape"):
    spearman_uncertainty_vs_label_entropy(np.ones(19), q)


def test_soft_label_validation():
  probs = _dists(12, 4, 3)
  with pytest.raises(ValueError, match="soft_labels must sum to 1"):
    soft_nll(probs, np.full((4, 3), 0.5))
  with pytest.raises(ValueError, match="same length"):
    kl_to_labels(probs, _dists(13, 5, 3))
  with pytest.raises(ValueError, match="3 classes"):
    generalized_energy_distance(probs, _dists(13, 4, 4))
  with pytest.raises(ValueError, match="member_probs_or_samples must sum to 1"):
    generalized_energy_distance(np.full((4, 2, 3), 0.5), probs)
