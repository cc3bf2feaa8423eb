"""Tests for the weight-standardised convolutions (`keras_unc.layers.std_conv`)."""

import keras
import numpy as np
import pytest

from keras_unc.layers.batch_ensemble import Conv2DBatchEnsemble, TileMembers
from keras_unc.layers.spectral_norm import SpectralNormalization
from keras_unc.layers.std_conv import (
  StdConv2D,
  StdConv2DBatchEnsemble,
  standardize_kernel,
  weight_standardized,
)
from tests.layers.helpers import run_layer_test


def _data(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _np(x):
  if isinstance(x, keras.Variable):  # `.value` avoids NumPy 2's `__array__` copy warning.
    x = x.value
  return keras.ops.convert_to_numpy(x)


def _standardize_by_hand(w, eps=1e-10):
  """big_vision `bit_paper.standardize(w, axis=[0, 1, 2], eps)`, in float64."""
  w = np.asarray(w, np.float64)
  centered = w - w.mean(axis=(0, 1, 2), keepdims=True)
  return centered / np.sqrt((centered**2).mean(axis=(0, 1, 2), keepdims=True) + eps)


def _conv_by_hand(x, w, stride, padding):
  """Cross-correlation of NHWC `x` with HWIO `w` (TF/Keras convention), in float64."""
  kh, kw = w.shape[:2]
  if (
    padding == "same"
  ):  # TF "same": total padding max(0, (ceil(n/s)-1)*s + k - n), extra at the end.
    pads = []
    for n, k in zip(x.shape[1:3], (kh, kw)):
      total = max(0, (-(-n // stride) - 1) * stride + k - n)
      pads.append((total // 2, total - total // 2))
    x = np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])
  out_h = (x.shape[1] - kh) // stride + 1
  out_w = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, w.shape[-1]))
  for i in range(out_h):
    for j in range(out_w):
      patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
      out[:, i, j] = np.einsum("bhwc,hwco->bo", patch, w)
  return out


@pytest.mark.parametrize(
  "layer_cls,init_kwargs,input_data,expected",
  [
    pytest.param(
      StdConv2D,
      {"filters": 4, "kernel_size": (3, 3), "padding": "same", "epsilon": 1e-10},
      _data(2, 6, 6, 3),
      {"expected_output_shape": (2, 6, 6, 4), "expected_num_trainable_weights": 2},
      id="StdConv2D",
    ),
    pytest.param(
      StdConv2DBatchEnsemble,
      {
        "filters": 4,
        "kernel_size": (3, 3),
        "ensemble_size": 2,
        "strides": (2, 2),
        "padding": "same",
        "epsilon": 1e-8,
      },
      _data(4, 6, 6, 3),
      # Shared kernel, alpha [M, C_in], gamma [M, C_out], bias [M, C_out].
      {"expected_output_shape": (4, 3, 3, 4), "expected_num_trainable_weights": 4},
      id="StdConv2DBatchEnsemble",
    ),
  ],
)
def test_layer_harness(layer_cls, init_kwargs, input_data, expected, tmp_path):
  report = run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    tmp_path=tmp_path,
    expected_num_non_trainable_weights=0,
    expected_num_seed_generators=0,
    mixed_precision_output_dtype="bfloat16",
    atol=1e-5,
    **expected,
  )
  # The .keras file holds the raw kernel, not the standardised one.
  np.testing.assert_array_equal(
    _np(report.loaded_layer._kernel), _np(report.layer._kernel), strict=True
  )
  assert report.loaded_layer.epsilon == init_kwargs["epsilon"]


@pytest.mark.parametrize("stride,padding", [(1, "same"), (2, "valid"), (2, "same")])
def test_math_against_numpy(stride, padding):
  rng = np.random.default_rng(3)
  layer = StdConv2D(5, 3, strides=stride, padding=padding)
  x = rng.normal(size=(2, 7, 7, 3)).astype("float32")
  layer.build(x.shape)
  # A raw kernel far from standardised (offset and scale per output channel) and a bias.
  raw = rng.normal(2.0, 3.0, size=(3, 3, 3, 5)) * np.arange(1, 6)
  bias = rng.normal(size=5)
  layer.set_weights([raw.astype("float32"), bias.astype("float32")])

  w_hat = _standardize_by_hand(raw)
  np.testing.assert_allclose(w_hat.mean(axis=(0, 1, 2)), 0.0, atol=1e-12)
  np.testing.assert_allclose(w_hat.var(axis=(0, 1, 2)), 1.0, rtol=1e-9)
  np.testing.assert_allclose(_np(layer.kernel), w_hat, atol=1e-5)
  np.testing.assert_allclose(_np(layer._kernel), raw, rtol=1e-6)  # The variable stays raw.

  expected = _conv_by_hand(x.astype(np.float64), w_hat, stride, padding) + bias
  np.testing.assert_allclose(_np(layer(x)), expected, atol=1e-4)


def test_standardize_kernel_epsilon():
  # A constant output channel has zero variance: the result is 0, not NaN.
  w = np.ones((1, 1, 2, 1), "float32")
  np.testing.assert_array_equal(_np(standardize_kernel(w)), 0.0)
  w = np.array([0.0, 2.0], "float32").reshape(1, 1, 2, 1)  # mean 1, var 1
  np.testing.assert_allclose(_np(standardize_kernel(w, epsilon=3.0)).ravel(), [-0.5, 0.5])


def test_batch_ensemble_math():
  rng = np.random.default_rng(4)
  layer = StdConv2DBatchEnsemble(3, 3, ensemble_size=2, padding="same", use_bias=False)
  x = TileMembers(2)(rng.normal(size=(1, 5, 5, 2)).astype("float32"))
  layer.build(x.shape)
  raw = rng.normal(1.0, 2.0, size=(3, 3, 2, 3)).astype("float32")
  alpha = rng.normal(size=(2, 2)).astype("float32")
  gamma = rng.normal(size=(2, 3)).astype("float32")
  layer.set_weights([raw, alpha, gamma])
  w_hat = _standardize_by_hand(raw)
  x = _np(x).astype(np.float64)
  expected = np.concatenate(
    [_conv_by_hand(x[i : i + 1] * alpha[i], w_hat, 1, "same") * gamma[i] for i in range(2)]
  )
  np.testing.assert_allclose(_np(layer(x.astype("float32"))), expected, atol=1e-4)


def test_spectral_norm_acts_on_the_standardised_kernel():
  # SpectralNormalization reads `layer.kernel`, the standardised kernel ŵ, and runs the conv
  # with ŵ · min(1, c / σ(ŵ)): a standardised kernel has σ >= sqrt(fan_in) = sqrt(18) here,
  # so c = 1 really rescales it.
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2, 6, 6, 2)).astype("float32")
  wrapped = SpectralNormalization(StdConv2D(4, 3, padding="same", use_bias=False), norm_bound=1.0)
  wrapped(x)  # build
  raw = rng.normal(0.5, 2.0, size=(3, 3, 2, 4))
  wrapped.layer.set_weights([raw.astype("float32")])
  w_hat = _standardize_by_hand(raw)
  u = _np(wrapped.u).astype(np.float64)
  matrix = w_hat.reshape(-1, 4)
  v = matrix @ u
  sigma = np.linalg.norm(v)  # The estimate σ = vᵀ W u with v = Wu / |Wu|, from the stored u.
  assert np.linalg.norm(matrix, 2) >= np.sqrt(18) - 1e-9 and sigma > 1.0
  np.testing.assert_allclose(_np(wrapped.spectral_norm()), sigma, rtol=1e-5)
  expected = _conv_by_hand(x.astype(np.float64), w_hat / sigma, 1, "same")
  np.testing.assert_allclose(_np(wrapped(x)), expected, atol=1e-5)


def test_weight_standardized_conversions():
  conv = keras.layers.Conv2D(
    6, 3, strides=2, padding="same", use_bias=False, kernel_initializer="he_normal", name="c"
  )
  std = weight_standardized(conv, epsilon=1e-6)
  assert type(std) is StdConv2D and std.epsilon == 1e-6
  expected = {**conv.get_config(), "epsilon": 1e-6}
  assert std.get_config() == expected

  be = Conv2DBatchEnsemble(6, 3, 2, padding="same", name="be")
  std_be = weight_standardized(be)
  assert type(std_be) is StdConv2DBatchEnsemble
  assert std_be.get_config() == {**be.get_config(), "epsilon": 1e-10}

  sn = SpectralNormalization(Conv2DBatchEnsemble(6, 3, 2, name="x"), norm_bound=3.0, name="x_sn")
  std_sn = weight_standardized(sn)
  assert type(std_sn) is SpectralNormalization and type(std_sn.layer) is StdConv2DBatchEnsemble
  assert (std_sn.name, std_sn.norm_bound, std_sn.layer.name) == ("x_sn", 3.0, "x")

  assert weight_standardized(std) is std  # Already standardised: unchanged.


def test_weight_standardized_errors():
  with pytest.raises(TypeError, match="Cannot weight-standardise Dense"):
    weight_standardized(keras.layers.Dense(3))
  built = keras.layers.Conv2D(2, 1)
  built.build((None, 4, 4, 1))
  with pytest.raises(TypeError, match="needs an unbuilt layer"):
    weight_standardized(built)
  with pytest.raises(ValueError, match="epsilon must be > 0"):
    StdConv2D(2, 1, epsilon=0.0)
  with pytest.raises(ValueError, match="does not support LoRA"):
    StdConv2D(2, 1, lora_rank=2)
