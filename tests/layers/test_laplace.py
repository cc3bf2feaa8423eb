"""`LaplaceLinear` and its NumPy fit against explicit transcriptions of laplace-torch.

The references build what laplace-torch builds, explicitly: the last layer's parameters in
torch order (`W [C, D]` row-major, then `b [C]`), the per-example Jacobian
`J_n = [I_C ⊗ φ_nᵀ, I_C]` (C x (CD + C)), the GGN `Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n`
(`curvature/backpack.py`/`asdl.py` `diag`), the KFAC blocks `[[B, A / N], [B]]`
(`asdl.py` `_get_kron_factors` + `_rescale_kron_factors`: weight block `B ⊗ A/N`, bias block
`B`, `utils/matrix.py` `Kron.to_matrix`), the posterior covariance `(H + τ I)⁻¹`, the GLM
logit covariance `J Σ Jᵀ` (`baselaplace.py` `_glm_predictive_distribution`), the probit
`softmax(μ / sqrt(1 + π/8 var))` and `log_marginal_likelihood`
`−NLL − ½ (log det P − log det P₀ + τ ‖θ‖²)` (`baselaplace.py`), all on copied weights.
"""

import math
import tracemalloc

import numpy as np
import pytest
import threadpoolctl

from keras_unc.layers.laplace import (
  Curvature,
  LaplaceLinear,
  optimize_prior_precision,
  probit_probs,
)
from keras_unc.methods.laplace import Laplace
from tests.layers.helpers import run_layer_test

D, C, N, TAU = 5, 3, 40, 0.7


def _softmax(z):
  e = np.exp(z - z.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def _data(seed=0, n=N, d=D, c=C):
  rng = np.random.default_rng(seed)
  phi = rng.normal(size=(n, d))
  kernel, bias = rng.normal(size=(d, c)) * 0.7, rng.normal(size=c) * 0.3
  labels = rng.integers(0, c, size=n)
  # float32-representable: the layer stores its weights in float32.
  return phi, labels, kernel.astype("float32").astype(float), bias.astype("float32").astype(float)


def _jacobian(phi, c):
  """laplace-torch's last-layer Jacobian of one example, torch parameter order."""
  return np.concatenate([np.kron(np.eye(c), phi[None, :]), np.eye(c)], axis=1)


def _reference(phi, labels, kernel, bias):
  """Explicit GGN and KFAC matrices (P x P), the NLL and θ (torch order)."""
  c = kernel.shape[1]
  p = _softmax(phi @ kernel + bias)
  ggn = sum(
    _jacobian(f, c).T @ (np.diag(q) - np.outer(q, q)) @ _jacobian(f, c) for f, q in zip(phi, p)
  )
  a = sum(np.outer(f, f) for f in phi) / len(phi)  # rescaled by 1 / N
  b = sum(np.diag(q) - np.outer(q, q) for q in p)
  kfac = np.zeros_like(ggn)
  w = kernel.size
  kfac[:w, :w], kfac[w:, w:] = np.kron(b, a), b
  nll = -np.log(p[np.arange(len(labels)), labels]).sum()
  theta = np.concatenate([kernel.T.reshape(-1), bias])
  return ggn, kfac, nll, theta


def _fitted(hessian, link="probit", seed=0, num_samples=10):
  phi, labels, kernel, bias = _data(seed)
  layer = LaplaceLinear(C, hessian=hessian, link=link, num_samples=num_samples, seed=3)
  layer.build((None, D))
  layer.kernel.assign(kernel.astype("float32"))
  layer.bias.assign(bias.astype("float32"))
  curvature = layer.curvature()
  for i in range(0, N, 16):  # streamed in batches
    curvature.add(phi[i : i + 16], labels[i : i + 16])
  layer.set_posterior(curvature.posterior(), TAU)
  return layer, curvature, (phi, labels, kernel, bias)


def test_diag_and_kfac_hessians_match_laplace_torch():
  phi, labels, kernel, bias = _data()
  ggn, kfac, _, _ = _reference(phi, labels, kernel, bias)
  diag = Curvature(kernel, bias, "diag")
  kron = Curvature(kernel, bias, "kron")
  for i in range(0, N, 16):
    diag.add(phi[i : i + 16], labels[i : i + 16])
    kron.add(phi[i : i + 16], labels[i : i + 16])
  post = diag.posterior()
  found = np.concatenate([post["hessian_kernel"].T.reshape(-1), post["hessian_bias"]])
  np.testing.assert_allclose(found, np.diag(ggn), rtol=1e-10)
  post = kron.posterior()
  a = post["eigvecs_a"] @ np.diag(post["eigvals_a"]) @ post["eigvecs_a"].T
  g = post["eigvecs_g"] @ np.diag(post["eigvals_g"]) @ post["eigvecs_g"].T
  w = kernel.size
  np.testing.assert_allclose(np.kron(g, a), kfac[:w, :w], atol=1e-10)
  np.testing.assert_allclose(g, kfac[w:, w:], atol=1e-10)
  # The bias block of the exact GGN is exactly G; KFAC approximates the weight block.
  np.testing.assert_allclose(ggn[w:, w:], kfac[w:, w:], atol=1e-10)


@pytest.mark.parametrize("hessian", ["kron", "diag"])
def test_logit_covariance_matches_explicit_jacobian_form(hessian):
  layer, curvature, (phi, labels, kernel, bias) = _fitted(hessian)
  ggn, kfac, _, _ = _reference(phi, labels, kernel, bias)
  h = kfac if hessian == "kron" else np.diag(np.diag(ggn))
  sigma = np.linalg.inv(h + TAU * np.eye(len(h)))  # (DC + C)^2: the explicit posterior
  x = phi[:6].astype("float32")
  w = np.asarray(layer._variance_terms(x), np.float64)
  mean = phi[:6] @ kernel + bias
  for i, f in enumerate(phi[:6]):
    jac = _jacobian(f, C)
    explicit = jac @ sigma @ jac.T
    if hessian == "kron":  # The full covariance, off-diagonals included: Q_G diag(w) Q_Gᵀ.
      q = curvature.posterior()["eigvecs_g"]
      np.testing.assert_allclose(q @ np.diag(w[i]) @ q.T, explicit, rtol=2e-4, atol=1e-6)
    else:
      np.testing.assert_allclose(explicit, np.diag(np.diag(explicit)), atol=1e-12)
      np.testing.assert_allclose(w[i], np.diag(explicit), rtol=2e-4)
    # Probit predictive, as laplace-torch's `_glm_predictive_distribution` + probit.
    expected = mean[i] / np.sqrt(1 + math.pi / 8 * np.diag(explicit))
    found = np.asarray(layer(x[i : i + 1]))[0, 0]
    np.testing.assert_allclose(found, expected, rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(
      _softmax(found[None])[0], probit_probs(mean[i : i + 1], np.diag(explicit)[None])[0], rtol=2e-4
    )
    # The NumPy moments the τ search uses agree too.
    m, v = curvature.logit_moments(phi[i : i + 1], TAU)
    np.testing.assert_allclose(v[0], np.diag(explicit), rtol=1e-8)


def test_mc_samples_have_the_posterior_logit_covariance():
  layer, curvature, (phi, labels, kernel, bias) = _fitted("kron", "mc", num_samples=20000)
  _, kfac, _, _ = _reference(phi, labels, kernel, bias)
  sigma = np.linalg.inv(kfac + TAU * np.eye(len(kfac)))
  jac = _jacobian(phi[0], C)
  samples = np.asarray(layer(phi[:1].astype("float32")))[0]  # [S, C]
  assert samples.shape == (20000, C)
  np.testing.assert_allclose(samples.mean(0), phi[0] @ kernel + bias, atol=0.05)
  np.testing.assert_allclose(np.cov(samples.T), jac @ sigma @ jac.T, atol=0.03)


@pytest.mark.parametrize("hessian", ["kron", "diag"])
def test_log_marginal_likelihood_matches_laplace_torch(hessian):
  _, curvature, (phi, labels, kernel, bias) = _fitted(hessian)
  ggn, kfac, nll, theta = _reference(phi, labels, kernel, bias)
  h = kfac if hessian == "kron" else np.diag(np.diag(ggn))
  for tau in (0.1, TAU, 30.0):
    log_det_ratio = np.linalg.slogdet(h + tau * np.eye(len(h)))[1] - len(h) * math.log(tau)
    expected = -nll - 0.5 * (log_det_ratio + tau * theta @ theta)
    np.testing.assert_allclose(curvature.log_marginal_likelihood(tau), expected, rtol=1e-10)
  # marglik: the maximum over log τ (a dense grid never beats it).
  tau = optimize_prior_precision(curvature, "marglik")
  grid = np.logspace(-4, 4, 400)
  assert (
    curvature.log_marginal_likelihood(tau)
    >= max(map(curvature.log_marginal_likelihood, grid)) - 1e-6
  )
  # nll: laplace-torch's gridsearch picks the grid point of least held-out probit NLL.
  held = _data(seed=5)
  found = optimize_prior_precision(curvature, "nll", (held[0], held[1]), grid_size=30)
  nlls = [
    -np.log(probit_probs(*curvature.logit_moments(held[0], t))[np.arange(N), held[1]]).mean()
    for t in np.logspace(-4, 4, 30)
  ]
  assert found == pytest.approx(np.logspace(-4, 4, 30)[int(np.argmin(nlls))])


def test_thousand_classes_fit_and_predict_without_the_jacobian():
  """C = 1000, D = 512: laplace-torch #138 builds J = φᵀ ⊗ I per example, C x (DC + C)
  float64 = 1000 x 513000 x 8 B = 4.1 GB (a batch of 8: 33 GB). The Kronecker identity keeps
  the fit and the predictive at O(D² + C² + DC): the measured NumPy peak (tracemalloc,
  fit on 256 examples + predictive of 8) stays below 100 MB (~40 MB here).
  """
  d, c, n, b = 512, 1000, 256, 8
  rng = np.random.default_rng(0)
  kernel, bias = rng.normal(size=(d, c)) * 0.05, np.zeros(c)
  explicit_jacobian_bytes = c * (d * c + c) * 8
  # One BLAS thread: the 1000 x 1000 eigh takes ~1 s; threads spinning on a busy 2-core CI
  # machine made it ~15 s.
  with threadpoolctl.threadpool_limits(1):
    tracemalloc.start()
    curvature = Curvature(kernel, bias, "kron")
    for _ in range(n // 64):
      curvature.add(rng.normal(size=(64, d)), rng.integers(0, c, size=64))
    tau = optimize_prior_precision(curvature, "marglik")
    mean, var = curvature.logit_moments(rng.normal(size=(b, d)), tau)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
  print(
    f"tracemalloc peak {peak / 1e6:.1f} MB; explicit Jacobian {explicit_jacobian_bytes / 1e9:.1f} GB"
  )
  assert var.shape == (b, c) and np.all(var > 0)
  assert peak < 100e6 < explicit_jacobian_bytes / 40, (peak, explicit_jacobian_bytes)
  # The Keras layer predicts the same variances from the stored factors.
  layer = LaplaceLinear(c)
  layer.build((None, d))
  layer.kernel.assign(kernel.astype("float32"))
  layer.set_posterior(curvature.posterior(), tau)
  x = rng.normal(size=(b, d)).astype("float32")
  _, var = curvature.logit_moments(x, tau)
  out = np.asarray(layer(x))[:, 0]
  np.testing.assert_allclose(
    out, (x @ kernel) / np.sqrt(1 + math.pi / 8 * var), rtol=1e-3, atol=1e-5
  )
  state = [v for v in layer.non_trainable_weights if v.name.startswith("eigvecs")]
  assert sorted(tuple(v.shape) for v in state) == [(d, d), (c, c)]  # never (DC)^2


def test_unfitted_layer_is_the_map_dense_layer():
  phi, _, kernel, bias = _data()
  for link in ("probit", "mc"):
    layer = LaplaceLinear(C, link=link, num_samples=4)
    layer.build((None, D))
    layer.kernel.assign(kernel.astype("float32"))
    layer.bias.assign(bias.astype("float32"))
    out = np.asarray(layer(phi.astype("float32")))
    assert out.shape == (N, layer.members, C)
    np.testing.assert_allclose(
      out, np.broadcast_to((phi @ kernel + bias)[:, None], out.shape), rtol=1e-5, atol=1e-5
    )
    train = np.asarray(layer(phi.astype("float32"), training=True))
    assert train.shape == (N, 1, C)


@pytest.mark.parametrize("hessian,link", [("kron", "probit"), ("diag", "mc")])
def test_layer_harness(hessian, link, tmp_path):
  members = 1 if link == "probit" else 3
  run_layer_test(
    LaplaceLinear,
    dict(units=4, hessian=hessian, link=link, num_samples=3, seed=1),
    np.random.default_rng(0).normal(size=(2, 6)).astype("float32"),
    tmp_path=tmp_path,
    expected_output_shape=(2, members, 4),
    expected_num_trainable_weights=2,
    expected_num_non_trainable_weights=6 if hessian == "kron" else 4,
    expected_num_seed_generators=1 if link == "mc" else 0,
    deterministic=True,  # Unfitted: the MAP layer (mc samples vary once fitted, tested above).
  )


def test_bad_input_is_refused():
  with pytest.raises(ValueError, match="hessian"):
    LaplaceLinear(3, hessian="full")
  with pytest.raises(ValueError, match="link"):
    LaplaceLinear(3, link="bridge")
  with pytest.raises(ValueError, match="prior_method"):
    Laplace(prior_method="gridsearch")
  with pytest.raises(ValueError, match="fit_examples"):
    Laplace(fit_examples=0)
  curvature = Curvature(np.zeros((4, 3)), np.zeros(3), "kron")
  with pytest.raises(ValueError, match=r"\[B, 4\]"):
    curvature.add(np.zeros((2, 5)), np.zeros(2, int))
  with pytest.raises(ValueError, match="no training examples"):
    curvature.posterior()
  curvature.add(np.ones((2, 4)), np.zeros(2, int))
  with pytest.raises(ValueError, match="held-out"):
    optimize_prior_precision(curvature, "nll", None)
