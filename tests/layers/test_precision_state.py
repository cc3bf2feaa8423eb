"""Layer state that stays float32 under the mixed policies, checked against float32 layers
on the same weights (the whole-method checks are in tests/scale/test_precision.py)."""

import keras
import numpy as np
import pytest

from keras_unc.layers.batch_ensemble import Conv2DBatchEnsemble, TileMembers
from keras_unc.layers.spectral_norm import SpectralNormalization


def _pair(make, policy, x):
  """A float32 layer and a `policy` layer with the same weights, both built on `x`."""
  ref, mixed = make("float32"), make(policy)
  ref(x), mixed(x)
  for a, b in zip(ref.weights, mixed.weights):
    b.assign(a)
  return ref, mixed


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize(
  "make, shape",
  [
    (lambda p: SpectralNormalization(keras.layers.Dense(6), 0.5, 2, dtype=p), (4, 5)),
    (
      lambda p: SpectralNormalization(
        Conv2DBatchEnsemble(3, 2, 2, padding="same", dtype=p), 0.5, dtype=p
      ),
      (4, 3, 3, 2),
    ),
  ],
  ids=["dense", "conv_batchensemble"],
)
def test_power_iteration_state_stays_float32(make, shape, policy):
  # u and σ are float32 and within 1e-3 of the float32 layer's on the same weights (u stored
  # or iterated in 16 bits would be off by ~4e-3); the output is in the compute dtype.
  x = np.random.default_rng(0).normal(size=shape).astype("float32")
  if len(shape) == 4:
    x = np.asarray(TileMembers(2)(x))
  ref, mixed = _pair(make, policy, x)
  out_ref, out = ref(x, training=True), mixed(x, training=True)
  assert mixed.u.dtype == "float32"
  assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
  np.testing.assert_allclose(mixed.u.numpy(), ref.u.numpy(), rtol=1e-6, atol=1e-7)
  sigma, sigma_ref = mixed.spectral_norm(), ref.spectral_norm()
  assert keras.backend.standardize_dtype(sigma.dtype) == "float32"
  np.testing.assert_allclose(float(sigma), float(sigma_ref), rtol=1e-6)
  tol = 2e-2 if policy == "mixed_bfloat16" else 2e-3
  np.testing.assert_allclose(np.asarray(out, "float32"), np.asarray(out_ref), rtol=tol, atol=tol)
