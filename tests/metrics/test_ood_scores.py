"""OOD and epistemic scores against separate NumPy / SciPy / scikit-learn transcriptions of
the papers' reference code (loops, sklearn's EmpiricalCovariance and NearestNeighbors).
"""

import collections

import numpy as np
import pytest
from scipy.special import logsumexp, softmax
from sklearn.covariance import EmpiricalCovariance
from sklearn.neighbors import NearestNeighbors

from keras_unc import metrics

RNG = np.random.default_rng(0)


def _logits(n=40, m=4, c=6, scale=2.0, seed=0):
  return np.random.default_rng(seed).normal(scale=scale, size=(n, m, c))


def test_energy_matches_scipy_logsumexp():
  z = _logits()
  for t in (1.0, 2.5):
    want = -t * logsumexp(z.mean(axis=1) / t, axis=1)
    np.testing.assert_allclose(metrics.energy_score(z, temperature=t), want, rtol=1e-12)
  np.testing.assert_allclose(metrics.energy_score(z[:, 0]), -logsumexp(z[:, 0], axis=1))
  # Huge logits stay finite (the max is subtracted).
  assert np.isfinite(metrics.energy_score(np.array([[1e4, -1e4]]))).all()


def test_gen_matches_reference_sort_transcription():
  # GEN's reference code: probs_sorted = np.sort(p)[:, -M:]; -sum(q^g (1 - q)^g).
  p = softmax(_logits()[:, 0] * 2, axis=1)
  for gamma, m in ((0.1, 100), (0.5, 3), (0.1, 1)):
    q = np.sort(p, axis=1)[:, -m:]
    want = np.sum(q**gamma * (1 - q) ** gamma, axis=1)
    np.testing.assert_allclose(metrics.gen_score(p, gamma, m), want, rtol=1e-12)
  # One-hot is the most confident: score 0; uniform over C=2 is the largest for gamma fixed.
  assert metrics.gen_score(np.array([[1.0, 0.0]]))[0] == 0.0
  assert metrics.gen_score(np.array([[0.5, 0.5]]))[0] > metrics.gen_score(np.array([[0.9, 0.1]]))[0]


def test_mutual_information_matches_loops():
  z = _logits(n=12)
  want = []
  for row in z:
    members = [np.exp(r) / np.exp(r).sum() for r in row]
    mean = sum(members) / len(members)
    h = lambda q: -sum(v * np.log(v) for v in q if v > 0)
    want.append(h(mean) - sum(h(q) for q in members) / len(members))
  np.testing.assert_allclose(metrics.mutual_information(z), want, rtol=1e-9, atol=1e-12)
  # Identical members: no disagreement, MI 0.
  same = np.repeat(z[:, :1], 3, axis=1)
  np.testing.assert_allclose(metrics.mutual_information(same), 0.0, atol=1e-12)


def test_variation_ratio_matches_counter():
  z = _logits(n=30, m=5, c=3)
  want = [
    1 - collections.Counter(int(np.argmax(r)) for r in row).most_common(1)[0][1] / 5 for row in z
  ]
  np.testing.assert_allclose(metrics.variation_ratio(z), want)
  assert 0 < np.mean(want)  # Some disagreement in the sample.


@pytest.mark.parametrize("fn", [metrics.mutual_information, metrics.variation_ratio])
def test_epistemic_scores_refuse_one_member(fn):
  with pytest.raises(ValueError, match="multi-member or MC method"):
    fn(_logits(m=1))
  with pytest.raises(ValueError, match="multi-member or MC method"):
    fn(_logits()[:, 0])  # [N, C]: no member axis.


def _head(d=12, c=5, seed=1):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(d, c)), rng.normal(size=c)


def _features(n, d=12, seed=2, shift=0.0):
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(d, d)) * np.linspace(2.0, 0.1, d)
  return np.abs(rng.normal(size=(n, d)) @ mix) + shift  # ReLU-like, anisotropic.


def _vim_reference(train, test, w_torch, b, dim):
  # haoqiwang/vim benchmark.py, W in torch layout [C, D]; returns the OOD-positive score.
  u = -np.matmul(np.linalg.pinv(w_torch), b)
  ec = EmpiricalCovariance(assume_centered=True).fit(train - u)
  eig_vals, eigen_vectors = np.linalg.eig(ec.covariance_)
  ns = np.ascontiguousarray((eigen_vectors.T[np.argsort(eig_vals * -1)[dim:]]).T)
  vlogit_train = np.linalg.norm(np.matmul(train - u, ns), axis=-1)
  alpha = (train @ w_torch.T + b).max(axis=-1).mean() / vlogit_train.mean()
  vlogit = np.linalg.norm(np.matmul(test - u, ns), axis=-1) * alpha
  return -(-vlogit + logsumexp(test @ w_torch.T + b, axis=-1))


def test_vim_matches_reference_code():
  w, b = _head()
  train, test = _features(300), _features(50, seed=3, shift=0.5)
  for dim in (4, 6, 11):
    fit = metrics.vim_fit(train, w, b, dim)
    got = metrics.vim_scores(fit, test, w, b)
    np.testing.assert_allclose(got, _vim_reference(train, test, w.T, b, dim), rtol=1e-8)
  assert fit.residual_basis.shape == (12, 1)


def test_vim_origin_has_zero_logits_and_default_dim():
  w, b = _head(d=12, c=5)
  fit = metrics.vim_fit(_features(100), w, b)
  np.testing.assert_allclose(fit.origin @ w + b, 0.0, atol=1e-10)  # C <= D: exact.
  assert fit.residual_basis.shape[1] == 12 - 6  # D // 2 below 768.
  assert [metrics.vim_default_dim(d) for d in (2048, 4096, 768, 1024, 512, 64)] == [
    1000,
    1000,
    512,
    512,
    256,
    32,
  ]


def test_vim_bad_input():
  w, b = _head()
  with pytest.raises(ValueError, match="principal dimension"):
    metrics.vim_fit(_features(50), w, b, dim=12)
  with pytest.raises(ValueError, match=r"\[D, C\] with D = 12"):
    metrics.vim_fit(_features(50), w.T, b)


def test_knn_matches_sklearn_nearest_neighbors():
  train, test = _features(200), _features(30, seed=4, shift=1.0)
  bank = metrics.knn_fit(train)
  norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  nn = NearestNeighbors(n_neighbors=50).fit(norm(train))
  want = nn.kneighbors(norm(test))[0][:, -1]
  np.testing.assert_allclose(metrics.knn_scores(bank, test, k=50), want, rtol=1e-9, atol=1e-7)
  # k clipped to the bank size: the farthest bank point.
  small = metrics.knn_fit(train, bank_size=10, seed=3)
  assert small.shape == (10, 12)
  far = NearestNeighbors(n_neighbors=10).fit(small).kneighbors(norm(test))[0][:, -1]
  np.testing.assert_allclose(metrics.knn_scores(small, test, k=50), far, rtol=1e-9, atol=1e-7)


def test_knn_bank_is_a_seeded_subsample_of_normalised_rows():
  train = _features(100)
  a, b = metrics.knn_fit(train, 20, seed=1), metrics.knn_fit(train, 20, seed=1)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, metrics.knn_fit(train, 20, seed=2))
  np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0)
  normed = train / np.linalg.norm(train, axis=1, keepdims=True)
  assert all(np.isclose(normed, row).all(axis=1).any() for row in a)  # Rows of the train set.


def test_react_matches_reference_code():
  w, b = _head()
  train, test = _features(200), _features(40, seed=5, shift=0.3)
  clip = np.quantile(train, 0.9)  # Reference: np.percentile(activation_log.flatten(), 90).
  want = -logsumexp(np.clip(test, a_min=None, a_max=clip) @ w + b, axis=-1)
  assert metrics.react_fit(train, 90) == pytest.approx(clip)
  np.testing.assert_allclose(metrics.react_scores(test, w, b, clip), want, rtol=1e-12)
  # Clipping changes the score (the test has activations above c).
  assert not np.allclose(want, metrics.energy_score(test @ w + b))


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: metrics.energy_score(np.zeros((2, 3)), temperature=0), "temperature"),
    (lambda: metrics.gen_score(np.full((1, 2), 0.5), gamma=-1), "gamma"),
    (lambda: metrics.gen_score(np.full((1, 2), 0.5), top_m=0), "top_m"),
    (lambda: metrics.knn_scores(np.eye(3), np.ones((2, 4))), "3-dimensional"),
    (lambda: metrics.knn_scores(np.eye(3), np.ones((2, 3)), k=0), "k must be"),
    (lambda: metrics.react_fit(np.ones((2, 3)), 101), "percentile"),
  ],
)
def test_bad_hyperparameters_are_clear_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_mahalanobis_fit_then_score_equals_mahalanobis_scores():
  rng = np.random.default_rng(7)
  train, labels, test = rng.normal(size=(90, 5)), rng.integers(0, 3, 90), rng.normal(size=(20, 5))
  fit = metrics.mahalanobis_fit(train, labels)
  for relative in (False, True):
    np.testing.assert_array_equal(
      metrics.mahalanobis_score(fit, test, relative=relative),
      metrics.mahalanobis_scores(train, labels, test, relative=relative),
    )
  assert fit.means.shape == (3, 5) and fit.whitener0.shape == (5, 5)
  plain = metrics.mahalanobis_fit(train, labels, relative=False)
  assert plain.whitener0 is None
  with pytest.raises(ValueError, match="relative=True"):
    metrics.mahalanobis_score(plain, test, relative=True)
  with pytest.raises(ValueError, match="train dimension 5"):
    metrics.mahalanobis_score(fit, test[:, :4])
