"""HetSNGP equals edward2's `HeteroscedasticSNGPLayer` (what ub's HetSNGP models use) on
copied weights and fixed noise: a NumPy transcription of its `__call__`."""

import keras
import numpy as np
import pytest

from keras_unc.layers.heteroscedastic import MCSoftmaxDenseFA
from keras_unc.methods import heads

B, D, C, R, L = 5, 6, 4, 2, 16


def _dense(layer, x):
  return x @ np.asarray(layer.kernel, "float64") + np.asarray(layer.bias, "float64")


def _edward2_hetsngp(x, gp, het, eps_r, eps_d, train_batches, het_w, sngp_w, tau):
  """edward2 `HeteroscedasticSNGPLayer.__call__(x, training=False)` in NumPy.

  `_compute_loc_param`: the SNGP layer's (gp_output, covmat) with covmat = s φ (sI + P)⁻¹ φᵀ,
  P = Σ φφᵀ over the training batches; `_compute_scale_param`: factor loadings and
  `sqrt(het_w · (softplus(diag(x)) + 1e-3)² + sngp_w · diag(covmat))`; the MC predictive
  `mean_s softmax((loc + V ε_R + d ε_K) / τ)`, clipped at eps = 1e-7, then log.
  """
  w, b = np.asarray(gp.random_kernel, "float64"), np.asarray(gp.random_bias, "float64")
  beta, s = np.asarray(gp.beta, "float64"), gp.gp_cov_ridge_penalty

  def features(h):
    return np.cos(h @ w + b)

  precision = sum(features(t).T @ features(t) for t in train_batches)
  covariance = np.linalg.inv(s * np.eye(L) + precision)
  phi = features(x)
  locs, covmat = phi @ beta, phi @ covariance @ phi.T * s
  diag = np.logaddexp(0.0, _dense(het.diag_layer, x)) + 1e-3
  diag = np.sqrt(het_w * diag**2 + sngp_w * np.diag(covmat)[:, None])
  factors = _dense(het.scale_layer, x).reshape(len(x), C, R)
  latents = locs[:, None] + np.einsum("ijk,iak->iaj", factors, eps_r) + diag[:, None] * eps_d
  z = latents / tau
  probs = np.exp(z - z.max(-1, keepdims=True))
  probs = (probs / probs.sum(-1, keepdims=True)).mean(1)
  return np.log(np.clip(probs, 1e-7, 1.0))


@pytest.mark.parametrize("het_w, sngp_w", [(1.0, 1.0), (0.5, 3.0)])
def test_hetsngp_inference_equals_edward2(monkeypatch, het_w, sngp_w):
  rng = np.random.default_rng(0)
  eps = (rng.normal(size=(B, 7, R)).astype("float32"), rng.normal(size=(B, 7, C)).astype("float32"))

  def fake_noise(self, batch_size, num_samples):
    if num_samples == 7:  # The test call: the draws the transcription uses.
      return tuple(map(keras.ops.convert_to_tensor, eps))
    shape = (int(batch_size), num_samples)
    return tuple(
      keras.ops.convert_to_tensor(rng.normal(size=shape + (k,)).astype("float32")) for k in (R, C)
    )

  monkeypatch.setattr(MCSoftmaxDenseFA, "_sample_noise", fake_noise)
  head = heads.HetGP(
    heads.GaussianProcess(num_inducing=L, kernel_scale=2.0),
    heads.Heteroscedastic(num_factors=R, temperature=0.8, train_mc_samples=3, test_mc_samples=7),
    sngp_var_weight=sngp_w,
    het_var_weight=het_w,
  )
  inputs = keras.Input((D,))
  logits, _ = head(inputs, C, members=1)
  model = keras.Model(inputs, logits)
  gp, het = model.get_layer("gp"), model.get_layer("het")
  for v in het.trainable_weights + [gp.beta]:
    v.assign(0.5 * rng.normal(size=v.shape).astype("float32"))
  batches = [rng.normal(size=(8, D)).astype("float32") for _ in range(3)]
  for batch in batches:
    model(batch, training=True)
  x = rng.normal(size=(B, D)).astype("float32")
  got = np.asarray(model(x))[:, 0]
  want = _edward2_hetsngp(x, gp, het, *eps, batches, het_w, sngp_w, 0.8)
  np.testing.assert_allclose(got, want, atol=2e-5)
  # The GP variance matters: without it (the "mean_field" form's noise) the output differs.
  assert not np.allclose(
    got, _edward2_hetsngp(x, gp, het, *eps, batches, het_w, 0.0, 0.8), atol=1e-3
  )


def test_hetsngp_inference_errors():
  with pytest.raises(ValueError, match="inference"):
    heads.HetGP(heads.GaussianProcess(), heads.Heteroscedastic(), inference="probit")
  with pytest.raises(ValueError, match="xl=False"):
    heads.HetGP(heads.GaussianProcess(), heads.Heteroscedastic(xl=True))
