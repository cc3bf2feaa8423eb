"""Rank-1 BNN and Flipout layers: the shared harness, NumPy references on copied weights and
the layers' own noise, the closed-form KL loss, and bad-input errors."""

import keras
import numpy as np
import pytest

from keras_unc.layers.bayesian import Conv2DFlipout, Conv2DRank1, DenseFlipout, DenseRank1
from tests.layers.helpers import run_layer_test


def _x(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype("float32")


# Weight counts by hand: rank-1 layers hold kernel, alpha mean/rho, gamma mean/rho, bias;
# Flipout layers kernel mean/rho and bias. One seed generator each.
HARNESS_CASES = [
  pytest.param(
    DenseRank1,
    {"units": 3, "ensemble_size": 2, "kl_weight": 0.01, "seed": 1},
    _x(4, 5),
    {"expected_output_shape": (4, 3), "expected_num_trainable_weights": 6},
    id="dense_rank1",
  ),
  pytest.param(
    DenseRank1,
    {"units": 3, "ensemble_size": 2, "random_sign_init": -0.5, "seed": 2},
    _x(4, 3, 5),  # ViT tokens [M*B, T, D].
    {"expected_output_shape": (4, 3, 3), "expected_num_trainable_weights": 6},
    id="dense_rank1_tokens",
  ),
  pytest.param(
    Conv2DRank1,
    {"filters": 3, "kernel_size": 3, "ensemble_size": 2, "padding": "same", "seed": 3},
    _x(4, 5, 5, 2),
    {"expected_output_shape": (4, 5, 5, 3), "expected_num_trainable_weights": 6},
    id="conv_rank1",
  ),
  pytest.param(
    DenseFlipout,
    {"units": 3, "kl_weight": 0.01, "seed": 4},
    _x(4, 5),
    {"expected_output_shape": (4, 3), "expected_num_trainable_weights": 3},
    id="dense_flipout",
  ),
  pytest.param(
    Conv2DFlipout,
    {"filters": 3, "kernel_size": 2, "strides": 2, "tied_mean": True, "seed": 5},
    _x(2, 6, 6, 2),
    {"expected_output_shape": (2, 3, 3, 3), "expected_num_trainable_weights": 3},
    id="conv_flipout",
  ),
]


@pytest.mark.parametrize("layer_cls, init_kwargs, input_data, expected", HARNESS_CASES)
def test_layer_harness(layer_cls, init_kwargs, input_data, expected, tmp_path):
  run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    tmp_path=tmp_path,
    expected_num_non_trainable_weights=0,
    expected_num_seed_generators=1,
    deterministic=False,
    mixed_precision_output_dtype="bfloat16",
    **expected,
  )


def _randomise(layer, seed=0):
  rng = np.random.default_rng(seed)
  for w in layer.weights:
    if "seed_generator" not in w.path:
      w.assign(rng.normal(scale=0.5, size=w.shape).astype("float32"))


def _copy_generator(layer):
  """A SeedGenerator at the layer's state: it draws the noise the layer's next call draws."""
  gen = keras.random.SeedGenerator(0)
  gen.state.assign(layer.seed_generator.state.value)
  return gen


def _softplus(x):
  return np.log1p(np.exp(x))


def _np_kl(mean, stddev, prior_mean, prior_stddev):
  """Closed-form KL(N(mean, stddev²) || N(prior_mean, prior_stddev²)), summed."""
  return np.sum(
    np.log(prior_stddev / stddev)
    + (stddev**2 + (mean - prior_mean) ** 2) / (2 * prior_stddev**2)
    - 0.5
  )


def _np_conv_valid(x, w):
  """NumPy 2-D convolution (cross-correlation), stride 1, 'valid', channels_last."""
  kh, kw = w.shape[:2]
  h, wd = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  out = np.zeros((x.shape[0], h, wd, w.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      out += np.einsum("nhwc,cf->nhwf", x[:, i : i + h, j : j + wd], w[i, j])
  return out


def _np_rank1(x, layer, gen, op):
  """edward2 `DenseRank1.call` / `Conv2DRank1.call` (layers/dense.py, convolutional.py):
  reshape to [M, K, ...], per-example factors `clip(mean + stddev ε, -10, 10)`,
  `op(x * alpha, W) * gamma + bias`, with ε the layer's own draws (alpha first)."""
  m, n = layer.ensemble_size, x.shape[0]
  k = n // m
  eps_a = np.asarray(keras.random.normal((n, x.shape[-1]), seed=gen)).reshape(m, k, -1)
  eps_g = np.asarray(keras.random.normal((n, layer.gamma_mean.shape[-1]), seed=gen))
  eps_g = eps_g.reshape(m, k, -1)
  am, ar = np.asarray(layer.alpha_mean), np.asarray(layer.alpha_rho)
  gm, gr = np.asarray(layer.gamma_mean), np.asarray(layer.gamma_rho)
  alpha = np.clip(am[:, None] + _softplus(ar)[:, None] * eps_a, -10, 10).reshape(n, -1)
  gamma = np.clip(gm[:, None] + _softplus(gr)[:, None] * eps_g, -10, 10).reshape(n, -1)
  bias = np.repeat(np.asarray(layer.bias), k, axis=0)
  extra = (1,) * (x.ndim - 2)
  a = alpha.reshape(n, *extra, -1)
  g, b = gamma.reshape(n, *extra, -1), bias.reshape(n, *extra, -1)
  y = op(x * a, np.asarray(layer.kernel)) * g + b
  kl = _np_kl(am, _softplus(ar), 1.0, layer.prior_stddev)
  kl += _np_kl(gm, _softplus(gr), 1.0, layer.prior_stddev)
  return y, kl


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_rank1_matches_numpy_transcription_and_adds_kl_over_n(kind):
  if kind == "dense":
    layer = DenseRank1(4, ensemble_size=2, kl_weight=1 / 50, prior_stddev=0.2, seed=0)
    x, op = _x(6, 5), np.matmul
  else:
    layer = Conv2DRank1(3, 2, ensemble_size=3, kl_weight=1 / 50, prior_stddev=0.2, seed=0)
    x, op = _x(6, 4, 4, 2), _np_conv_valid
  layer.build(x.shape)
  _randomise(layer)
  gen = _copy_generator(layer)
  y = np.asarray(layer(x, training=True))
  expected, kl = _np_rank1(x.astype("float64"), layer, gen, op)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
  assert len(layer.losses) == 1
  np.testing.assert_allclose(float(layer.losses[0]), kl / 50, rtol=1e-5)
  # New noise every call (training and inference alike), same distribution parameters.
  assert not np.allclose(np.asarray(layer(x, training=False)), y)


def _np_flipout(x, layer, gen, op):
  """edward2 `DenseFlipout.call` / `Conv2DFlipout.call`: `op(x, W_mean) +
  op(x * sign_in, ΔW) * sign_out + bias`, `ΔW = stddev ε` (the layer's draws: ε, then the
  input and output signs, per example, shared over spatial positions)."""
  mean, rho = np.asarray(layer.kernel_mean), np.asarray(layer.kernel_rho)
  eps = np.asarray(keras.random.normal(mean.shape, seed=gen))
  n, extra = x.shape[0], (1,) * (x.ndim - 2)
  sign_in = np.where(np.asarray(keras.random.uniform((n, mean.shape[-2]), seed=gen)) < 0.5, 1, -1)
  sign_out = np.where(np.asarray(keras.random.uniform((n, mean.shape[-1]), seed=gen)) < 0.5, 1, -1)
  sign_in, sign_out = sign_in.reshape(n, *extra, -1), sign_out.reshape(n, *extra, -1)
  y = op(x, mean) + op(x * sign_in, _softplus(rho) * eps) * sign_out + np.asarray(layer.bias)
  return y, _np_kl(mean, _softplus(rho), 0.0, layer.prior_stddev)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_flipout_matches_numpy_transcription_and_adds_kl_over_n(kind):
  if kind == "dense":
    layer, x, op = DenseFlipout(4, kl_weight=1 / 30, seed=0), _x(5, 3, 6), np.matmul
  else:
    layer, x, op = Conv2DFlipout(3, 2, kl_weight=1 / 30, seed=0), _x(4, 4, 4, 2), _np_conv_valid
  layer.build(x.shape)
  _randomise(layer)
  gen = _copy_generator(layer)
  y = np.asarray(layer(x))
  expected, kl = _np_flipout(x.astype("float64"), layer, gen, op)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(float(layer.losses[0]), kl / 30, rtol=1e-5)


def test_flipout_tied_mean_kl_is_the_stddev_term_only():
  layer = DenseFlipout(3, tied_mean=True, prior_stddev=0.1, seed=0)
  layer.build((2, 4))
  _randomise(layer)
  layer(_x(2, 4))
  stddev = _softplus(np.asarray(layer.kernel_rho))
  np.testing.assert_allclose(float(layer.losses[0]), _np_kl(0.0, stddev, 0.0, 0.1), rtol=1e-5)


def test_rank1_initialisation_follows_uncertainty_baselines():
  layer = DenseRank1(64, ensemble_size=4)
  layer.build((8, 32))
  assert set(np.unique(np.asarray(layer.alpha_mean))) == {-1.0, 1.0}  # Random signs.
  stddev = _softplus(np.asarray(layer.gamma_rho))
  assert abs(np.median(stddev) - np.sqrt(1e-3 / (1 - 1e-3))) < 0.005
  # N(1, 0.5) over 4 x 1024 draws: the standard error of the sample std is about 0.006, so
  # 0.03 is five standard errors (128 draws made this flaky at 2 sigma).
  normal = DenseRank1(8, ensemble_size=4, random_sign_init=-0.5)
  normal.build((8, 1024))
  draws = np.asarray(normal.alpha_mean)
  assert abs(draws.std() - 0.5) < 0.03
  assert abs(draws.mean() - 1.0) < 0.03


@pytest.mark.parametrize(
  "build, match",
  [
    (lambda: DenseRank1(3, ensemble_size=0), "ensemble_size"),
    (lambda: DenseRank1(3, ensemble_size=2, stddev_init=0.0), "stddev_init"),
    (lambda: DenseRank1(3, ensemble_size=2, prior_stddev=-1.0), "prior_stddev"),
    (lambda: DenseRank1(3, ensemble_size=2, kl_weight=-1.0), "kl_weight"),
    (lambda: DenseRank1(3, ensemble_size=2, random_sign_init=0.0), "random_sign_init"),
    (lambda: Conv2DRank1(3, 3, ensemble_size=2, groups=2), "groups=1"),
    (lambda: Conv2DFlipout(3, 3, padding="causal"), "padding"),
    (lambda: DenseFlipout(3, tied_mean="yes"), "tied_mean"),
    (lambda: DenseFlipout(3, stddev_init=-1e-3), "stddev_init"),
  ],
)
def test_bad_arguments_raise(build, match):
  with pytest.raises(ValueError, match=match):
    build()


def test_rank1_batch_not_divisible_by_members_raises():
  with pytest.raises(ValueError, match="not divisible by ensemble_size=3"):
    DenseRank1(2, ensemble_size=3)(_x(4, 5))
