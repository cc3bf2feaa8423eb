"""Tests for the big_vision-style few-shot ridge regression and shot selection."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from keras_unc.metrics import fewshot_ridge_accuracy, select_shots


def _data(seed, n, dim, classes, noise=2.0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(classes, dim))
  labels = rng.integers(0, classes, size=n)
  x = 5.0 + centers[labels] + rng.normal(scale=noise, size=(n, dim))
  return x.astype(np.float32), labels


def _reference_accuracy(x, y, xt, yt, l2, num_classes):
  """Primal ridge solved by sklearn on the documented design matrix."""
  x = x.astype(np.float64)
  xt = xt.astype(np.float64)
  mean, std = x.mean(axis=0), x.std(axis=0) + 1e-5
  design = lambda z: np.hstack([(z - mean) / std, np.full((len(z), 1), 100.0)])
  targets = 2.0 * np.eye(num_classes)[y] - 1.0
  ridge = Ridge(alpha=l2, fit_intercept=False, solver="cholesky").fit(design(x), targets)
  return np.mean(ridge.predict(design(xt)).argmax(axis=1) == yt)


@pytest.mark.parametrize("n_train, dim", [(200, 16), (30, 64)])  # N >= D and N < D.
@pytest.mark.parametrize("l2", [2.0**10, 1.0])
def test_matches_primal_ridge(n_train, dim, l2):
  x_all, y_all = _data(0, n_train + 500, dim, 5)
  x, y, xt, yt = x_all[:n_train], y_all[:n_train], x_all[n_train:], y_all[n_train:]
  got = fewshot_ridge_accuracy(x, y, xt, yt, l2_reg=l2)
  expected = _reference_accuracy(x, y, xt, yt, l2, 5)
  assert got == pytest.approx(expected, abs=1e-12)
  assert 0.2 < got <= 1.0


def test_separable_case_and_num_classes():
  rng = np.random.default_rng(1)
  x = np.concatenate([rng.normal(-5, 1, (10, 3)), rng.normal(5, 1, (10, 3))])
  y = np.r_[np.zeros(10, int), np.ones(10, int)]
  assert fewshot_ridge_accuracy(x, y, x, y) == 1.0
  # An extra, never-seen class column only adds a constant -1 target.
  assert fewshot_ridge_accuracy(x, y, x, y, num_classes=4) == 1.0
  with pytest.raises(ValueError, match=r"y_test must be in \[0, 2\)"):
    fewshot_ridge_accuracy(x, y, x, np.full(20, 2), num_classes=2)
  with pytest.raises(ValueError, match="train dimension 3"):
    fewshot_ridge_accuracy(x, y, x[:, :2], y)
  with pytest.raises(ValueError, match="l2_reg"):
    fewshot_ridge_accuracy(x, y, x, y, l2_reg=0.0)


def test_select_shots_follows_big_vision_draw():
  labels = np.random.default_rng(2).integers(0, 4, size=200)
  idx = select_shots(labels, 5, seed=3)
  rng = np.random.default_rng(3)  # big_vision: one permutation per class, in order.
  expected = np.concatenate([rng.permutation(np.where(labels == c)[0])[:5] for c in range(4)])
  np.testing.assert_array_equal(idx, expected)
  assert np.bincount(labels[idx]).tolist() == [5, 5, 5, 5]
  assert len(set(idx.tolist())) == 20
  np.testing.assert_array_equal(select_shots(labels, 5, seed=3), idx)
  assert not np.array_equal(select_shots(labels, 5, seed=4), idx)


def test_select_shots_errors():
  labels = np.array([0, 0, 1, 1, 1, 2])
  with pytest.raises(ValueError, match="class 2 has 1"):
    select_shots(labels, 2, seed=0)
  with pytest.raises(ValueError, match="class 3 has 0"):
    select_shots(labels, 1, seed=0, num_classes=4)
  with pytest.raises(ValueError, match="shots must be"):
    select_shots(labels, 0, seed=0)
  with pytest.raises(ValueError, match="out-of-range"):
    select_shots(np.array([0, -1]), 1, seed=0)
