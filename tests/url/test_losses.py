"""URL losses against NumPy computed by hand (SciPy Bessel functions for vMF constants)."""

import math

import keras
import numpy as np
import pytest
from scipy.special import ive

from keras_unc.methods.url import losses as L
from keras_unc.methods.url import vmf


def _log_c(kappa, dim):
  nu = dim / 2 - 1
  kappa = np.asarray(kappa, np.float64)
  return nu * np.log(kappa) - dim / 2 * np.log(2 * np.pi) - (np.log(ive(nu, kappa)) + kappa)


def _unit(x, axis=-1):
  return x / np.linalg.norm(x, axis=axis, keepdims=True)


def _lse(x):
  x = np.asarray(x, np.float64)
  return x.max() + np.log(np.exp(x - x.max()).sum())


def test_losspred_order_by_hand():
  unc = np.array([0.2, 0.5, 0.9, 0.1, 0.3, 0.3], "float32")
  ce = np.array([2.0, 1.0, 3.0, 0.5, 1.0, 1.02], "float32")
  out = np.asarray(L.losspred_order(unc, ce, gap=0.1, leeway_rho=0.05))
  # Pair 0: ce0 > ce1 (s=+1): max(0, -(0.2-0.5)+0.1) = 0.4. Pair 1: s=+1: max(0, -(0.8)+0.1)=0.
  # Pair 2: |1.0-1.02| < 0.05 -> s=0: cost gap 0.1.
  np.testing.assert_allclose(out, [0.4, 0.4, 0.0, 0.0, 0.1, 0.1], atol=1e-6)


def test_losspred_order_detaches_the_true_loss_and_needs_even_batch():
  import tensorflow as tf

  unc, ce = tf.Variable([0.2, 0.5]), tf.Variable([2.0, 1.0])
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(L.losspred_order(unc, ce))
  g_unc, g_ce = tape.gradient(loss, [unc, ce])
  np.testing.assert_allclose(g_unc.numpy(), [-2.0, 2.0])  # d/du of -(u0-u1) per row, x2 rows.
  assert g_ce is None
  with pytest.raises(ValueError, match="batch must be even, got 3"):
    L.losspred_order(np.zeros(3, "float32"), np.zeros(3, "float32"))


def test_riskpred_is_squared_error():
  np.testing.assert_allclose(
    np.asarray(L.riskpred(np.array([1.0, 0.0]), np.array([3.0, 0.5]))), [4.0, 0.25]
  )


def test_log_bessel_matches_scipy_and_small_argument_series():
  for dim in (8, 64, 512):
    nu = dim / 2 - 1
    for kappa in (0.5, 10.0, 100.0, 1000.0):
      with np.errstate(divide="ignore"):  # ive underflows to 0 for large nu, small kappa.
        exact = np.log(ive(nu, kappa)) + kappa
      if np.isfinite(exact):
        assert float(vmf.log_bessel_iv(nu, np.float32(kappa))) == pytest.approx(exact, abs=1e-3)
  # D = 2048, kappa = 0.5: SciPy underflows; I_nu(x) ~ (x/2)^nu / Gamma(nu+1) for x << nu.
  nu = 1023.0
  series = nu * math.log(0.25) - math.lgamma(nu + 1)
  assert float(vmf.log_bessel_iv(nu, np.float32(0.5))) == pytest.approx(series, rel=1e-5)


def test_vmf_samples_are_unit_with_the_right_mean_resultant_length():
  dim = 16
  mu = _unit(np.random.default_rng(0).normal(size=(3, dim))).astype("float32")
  kappa = np.array([1.0, 10.0, 100.0], "float32")
  s = np.asarray(vmf.sample_vmf(mu, kappa, 4000, keras.random.SeedGenerator(0)))
  assert s.shape == (4000, 3, dim)
  np.testing.assert_allclose(np.linalg.norm(s, axis=-1), 1.0, atol=1e-5)
  mean = s.mean(0)
  expected = ive(dim / 2, kappa) / ive(dim / 2 - 1, kappa)  # E[x] = A_D(kappa) mu
  np.testing.assert_allclose(np.linalg.norm(mean, axis=-1), expected, atol=0.02)
  np.testing.assert_allclose((mean * mu).sum(-1), expected, atol=0.02)


@pytest.mark.parametrize("alpha", [1.0, 7.5, 383.5])
def test_gamma_sampler_matches_scipy(alpha):
  # The XLA-compilable Marsaglia-Tsang draw (the Beta proposal of the vMF sampler) against
  # SciPy's Gamma(alpha) by a Kolmogorov-Smirnov test, and its first two moments.
  from scipy import stats

  x = np.asarray(vmf.sample_gamma((20000,), alpha, keras.random.SeedGenerator(1)), np.float64)
  assert stats.kstest(x, stats.gamma(alpha).cdf).pvalue > 1e-3
  assert x.mean() == pytest.approx(alpha, rel=0.02) and x.var() == pytest.approx(alpha, rel=0.1)
  with pytest.raises(ValueError, match="alpha >= 1"):
    vmf.sample_gamma((2,), 0.5, 0)


def test_vmf_sampler_compiles_with_xla():
  # No Gamma kernel (TensorFlow's stateless Gamma has no XLA kernel): the sampling losses
  # run on TPUs.
  import tensorflow as tf

  seed = keras.random.SeedGenerator(0)
  mu = _unit(np.random.default_rng(0).normal(size=(2, 8))).astype("float32")
  sample = tf.function(lambda m, k: vmf.sample_vmf(m, k, 3, seed), jit_compile=True)
  kappa = np.array([5.0, 50.0], "float32")
  out = sample(mu, kappa).numpy()
  assert out.shape == (3, 2, 8) and np.allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
  assert "f64[" not in sample.experimental_get_compiler_ir(mu, kappa)(stage="hlo")


def test_elk_by_hand():
  rng = np.random.default_rng(1)
  dim = 8
  z, w = rng.normal(size=(3, dim)), rng.normal(size=(dim, 4))
  kappa, class_kappa = np.array([2.0, 5.0, 20.0]), np.array([1.0, 3.0, 10.0, 30.0])
  out = np.asarray(
    L.elk_logits(
      z.astype("float32"),
      kappa.astype("float32"),
      w.astype("float32"),
      class_kappa.astype("float32"),
    )
  )
  by_hand = np.zeros((3, 4))
  for i in range(3):
    for c in range(4):
      joint = np.linalg.norm(kappa[i] * _unit(z[i]) + class_kappa[c] * _unit(w[:, c]))
      by_hand[i, c] = _log_c(kappa[i], dim) + _log_c(class_kappa[c], dim) - _log_c(joint, dim)
  np.testing.assert_allclose(out, by_hand, atol=5e-3)


def test_nivmf_by_hand():
  rng = np.random.default_rng(2)
  dim, samples = 8, 3
  x = _unit(rng.normal(size=(samples, 2, dim)))
  w = rng.normal(size=(dim, 3))
  class_kappa = rng.uniform(0.5, 5.0, size=(3, dim))
  out = np.asarray(
    L.nivmf_logits(x.astype("float32"), w.astype("float32"), class_kappa.astype("float32"))
  )
  by_hand = np.zeros((2, 3))
  for b in range(2):
    for c in range(3):
      m = _unit(w[:, c]) * class_kappa[c]
      norm = np.linalg.norm(m)
      ll = [
        _log_c(norm, dim) + x[s, b] @ m + np.log(class_kappa[c]).sum() - 2 * np.log(norm)
        for s in range(samples)
      ]
      by_hand[b, c] = _lse(ll) - np.log(samples)
  np.testing.assert_allclose(out, by_hand, atol=5e-3)


def test_pair_masks():
  pos, neg = L.pair_masks(None, 4, supervised=False)
  np.testing.assert_array_equal(
    np.asarray(pos), [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]
  )
  np.testing.assert_array_equal(
    np.asarray(neg), [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]
  )
  pos, neg = L.pair_masks(np.array([5, 7, 5]), 3, supervised=True)
  np.testing.assert_array_equal(np.asarray(pos), [[0, 0, 1], [0, 0, 0], [1, 0, 0]])
  np.testing.assert_array_equal(np.asarray(neg), [[0, 1, 0], [1, 0, 1], [0, 1, 0]])


def _contrastive_case():
  rng = np.random.default_rng(3)
  labels = np.array([0, 0, 1, 1, 2, 3])  # Example 5 (label 3) has no positive.
  pos = (labels[:, None] == labels[None]).astype("float32") - np.eye(6, dtype="float32")
  neg = (labels[:, None] != labels[None]).astype("float32")
  return rng, labels, pos, neg


def test_infonce_by_hand():
  rng, _, pos, neg = _contrastive_case()
  z = rng.normal(size=(6, 5))
  out = np.asarray(L.infonce(z.astype("float32"), pos, neg, 7.0))
  u = _unit(z)
  sim = 7.0 * u @ u.T
  by_hand = [
    -(_lse(sim[i][pos[i] > 0]) - _lse(sim[i][neg[i] > 0])) if pos[i].any() else 0.0
    for i in range(6)
  ]
  np.testing.assert_allclose(out, by_hand, atol=1e-4)
  assert out[5] == 0.0


def test_mcinfonce_by_hand():
  rng, _, pos, neg = _contrastive_case()
  x = _unit(rng.normal(size=(3, 6, 5)))
  out = np.asarray(L.mcinfonce(x.astype("float32"), pos, neg, 4.0))
  by_hand = []
  for i in range(6):
    if not pos[i].any():
      by_hand.append(0.0)
      continue
    per = [
      _lse(4.0 * x[s, i] @ x[s][pos[i] > 0].T) - _lse(4.0 * x[s, i] @ x[s][neg[i] > 0].T)
      for s in range(3)
    ]
    by_hand.append(-(_lse(per) - np.log(3)))
  np.testing.assert_allclose(out, by_hand, atol=1e-4)


def test_hib_by_hand():
  rng, _, pos, neg = _contrastive_case()
  x = _unit(rng.normal(size=(2, 6, 5)))
  out = np.asarray(L.hib(x.astype("float32"), pos, neg, 3.0, -0.5))
  sig = 1 / (1 + np.exp(-(3.0 * np.einsum("sid,sjd->sij", x, x) - 0.5)))
  p = sig.mean(0)
  by_hand = []
  for i in range(6):
    pos_term = np.log(p[i][pos[i] > 0]).mean() if pos[i].any() else 0.0
    by_hand.append(-(pos_term + np.log(1 - p[i][neg[i] > 0]).mean()))
  np.testing.assert_allclose(out, by_hand, atol=1e-4)
