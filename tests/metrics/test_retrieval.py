"""Tests for R@1 / R-AUROC against a brute-force N x N similarity matrix."""

import tracemalloc

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from keras_unc.metrics import r_auroc, recall_at_one


def _brute_force_mask(x, labels):
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  sim = x @ x.T
  np.fill_diagonal(sim, -np.inf)
  return labels[sim.argmax(axis=1)] == labels  # argmax: lowest index on ties.


def _clustered(seed, n, dim, classes):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(classes, dim))
  labels = rng.integers(0, classes, size=n)
  return centers[labels] + rng.normal(scale=1.2, size=(n, dim)), labels


@pytest.mark.parametrize("chunk_size", [3, 7, 64, 4096])
def test_recall_at_one_matches_brute_force(chunk_size):
  x, labels = _clustered(0, 300, 8, 5)
  r1, mask = recall_at_one(x, labels, chunk_size=chunk_size)
  expected = _brute_force_mask(x, labels)
  np.testing.assert_array_equal(mask, expected)
  assert isinstance(r1, float) and r1 == pytest.approx(expected.mean(), abs=0)
  assert 0.3 < r1 < 1.0


def test_recall_at_one_duplicates_scale_and_zero_vectors():
  # Rows 0, 1, 2 point the same way (ties broken to the lowest index, the
  # query excluded); row 3 is a zero vector (similarity 0 to everything).
  x = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 5.0]])
  labels = np.array([0, 1, 0, 2, 3, 3])
  _, mask = recall_at_one(x, labels, chunk_size=2)
  # NN: 0 -> 1 (wrong), 1 -> 0 (wrong), 2 -> 0 (right), 3 -> 0 (tie at 0, wrong),
  # 4 -> 5 (right), 5 -> 4 (right).
  np.testing.assert_array_equal(mask, [False, False, True, False, True, True])
  np.testing.assert_array_equal(mask, _brute_force_mask(x, labels))


def test_recall_at_one_never_builds_n_by_n():
  x, labels = _clustered(1, 6000, 4, 3)
  tracemalloc.start()
  _, mask = recall_at_one(x, labels, chunk_size=256)
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  assert peak < 20e6  # N x N float64 would be 288 MB.
  assert mask.shape == (6000,)


def test_r_auroc_matches_sklearn():
  x, labels = _clustered(2, 400, 6, 4)
  rng = np.random.default_rng(3)
  mask = _brute_force_mask(x, labels)
  unc = rng.random(400) + 0.5 * ~mask  # Informative uncertainty.
  expected = roc_auc_score(mask, -unc)
  assert r_auroc(x, labels, unc, chunk_size=50) == pytest.approx(expected, abs=1e-12)
  assert expected > 0.6


def test_retrieval_errors():
  x = np.eye(3)
  with pytest.raises(ValueError, match="at least 2 examples"):
    recall_at_one(x[:1], [0])
  with pytest.raises(ValueError, match="must have 2 rows"):
    recall_at_one(x, [0, 1])
  with pytest.raises(ValueError, match="chunk_size"):
    recall_at_one(x, [0, 1, 2], chunk_size=0)
  with pytest.raises(ValueError, match="1 non-finite"):
    recall_at_one(np.array([[np.nan, 1.0], [1.0, 0.0]]), [0, 1])
  with pytest.raises(ValueError, match="uncertainty must have shape"):
    r_auroc(x, [0, 1, 2], np.zeros(2))
  # All R@1-correct: AUROC undefined.
  with pytest.raises(ValueError, match="only one class"):
    r_auroc(
      np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]]), [0, 0, 1, 1], np.arange(4.0)
    )
