"""Tests for Mahalanobis and max-logit OOD scores (scikit-learn / NumPy references)."""

import numpy as np
import pytest
from sklearn.covariance import EmpiricalCovariance

from keras_unc.metrics import mahalanobis_scores, max_logit_score


def _gaussian_classes(seed, n_per_class, dim, class_ids):
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(dim, dim))
  x, y = [], []
  for k in class_ids:
    mu = rng.normal(scale=3.0, size=dim)
    x.append(mu + rng.normal(size=(n_per_class, dim)) @ mix)
    y.append(np.full(n_per_class, k))
  return np.concatenate(x), np.concatenate(y)


def test_matches_sklearn_empirical_covariance():
  train, labels = _gaussian_classes(0, 120, 5, [0, 1, 2])
  test = np.random.default_rng(1).normal(scale=4.0, size=(200, 5))
  means = {k: train[labels == k].mean(axis=0) for k in (0, 1, 2)}
  centered = train - np.stack([means[k] for k in labels])
  shared = EmpiricalCovariance(assume_centered=True).fit(centered)
  per_class = np.stack([shared.mahalanobis(test - means[k]) for k in (0, 1, 2)], axis=1)
  expected = per_class.min(axis=1)
  got = mahalanobis_scores(train, labels, test)
  np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
  # Relative: minus the distance under one Gaussian fitted on all train data.
  background = EmpiricalCovariance().fit(train).mahalanobis(test)
  got_rel = mahalanobis_scores(train, labels, test, relative=True)
  np.testing.assert_allclose(got_rel, expected - background, rtol=1e-9, atol=1e-8)


def test_label_ids_and_order_do_not_matter():
  train, labels = _gaussian_classes(2, 50, 4, [3, 7, 100])
  test = np.random.default_rng(3).normal(size=(30, 4))
  got = mahalanobis_scores(train, labels, test)
  perm = np.random.default_rng(4).permutation(len(labels))
  remapped = {3: 0, 7: 1, 100: 2}
  other = mahalanobis_scores(train[perm], np.array([remapped[v] for v in labels[perm]]), test)
  np.testing.assert_allclose(got, other, rtol=1e-10, atol=1e-10)
  # Train points of a class sit close to their own mean.
  assert got.dtype == np.float64 and got.shape == (30,)


def test_rank_deficient_covariance_uses_pinv():
  rng = np.random.default_rng(5)
  train = rng.normal(size=(8, 20))  # D > N: covariance of rank <= 6.
  labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  test = rng.normal(size=(6, 20))
  means = np.stack([train[labels == k].mean(axis=0) for k in (0, 1)])
  centered = train - means[labels]
  prec = np.linalg.pinv(centered.T @ centered / 8, rcond=1e-10, hermitian=True)
  d = np.stack([np.einsum("nd,de,ne->n", test - m, prec, test - m) for m in means], axis=1)
  got = mahalanobis_scores(train, labels, test)
  np.testing.assert_allclose(got, d.min(axis=1), rtol=1e-7, atol=1e-9)
  assert np.all(np.isfinite(got))


def test_mahalanobis_errors():
  train, labels = _gaussian_classes(6, 10, 3, [0, 1])
  with pytest.raises(ValueError, match="train dimension 3"):
    mahalanobis_scores(train, labels, np.zeros((2, 4)))
  with pytest.raises(ValueError, match="train_emb must have 19 rows"):
    mahalanobis_scores(train, labels[:-1], np.zeros((2, 3)))
  with pytest.raises(ValueError, match="non-finite"):
    mahalanobis_scores(train, labels, np.array([[0.0, np.nan, 1.0]]))
  with pytest.raises(ValueError, match="non-empty"):
    mahalanobis_scores(train, labels, np.zeros((0, 3)))


def test_max_logit_score():
  logits = np.array([[1.0, 3.0, -2.0], [0.5, 0.1, 0.2]])
  np.testing.assert_array_equal(max_logit_score(logits), [-3.0, -0.5])
  members = np.array([[[1.0, 3.0], [3.0, 1.0]], [[0.0, 4.0], [0.0, 2.0]]])  # [B=2, M=2, C=2]
  # Member means: [2, 2] -> -2 ; [0, 3] -> -3.
  np.testing.assert_array_equal(max_logit_score(members), [-2.0, -3.0])
  with pytest.raises(ValueError, match="2-D or 3-D"):
    max_logit_score(np.zeros(3))
  with pytest.raises(ValueError, match="1 non-finite"):
    max_logit_score(np.array([[np.inf, 0.0]]))
