"""BatchEnsemble layers: the shared harness, per-member math by hand, initialisers, gradients."""

import keras
import numpy as np
import pytest

from keras_unc.layers.batch_ensemble import (
  BatchNormBatchEnsemble,
  Conv2DBatchEnsemble,
  DenseBatchEnsemble,
  NormalAroundOne,
  RandomSign,
  TileMembers,
)
from keras_unc.layers.outputs import MemberAxis
from tests.layers.helpers import run_layer_test


def _data(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype("float32")


# Weight counts by hand: a BatchEnsemble layer holds the shared kernel, alpha [M, D_in], gamma
# [M, D_out] and (with use_bias) bias [M, D_out], all trainable; TileMembers holds none.
HARNESS_CASES = [
  pytest.param(
    TileMembers,
    {"num_members": 3},
    _data(2, 4),
    {"expected_output_shape": (6, 4), "expected_num_trainable_weights": 0},
    id="tile_members",
  ),
  pytest.param(
    TileMembers,
    {"num_members": 4, "train_members": 2},
    _data(2, 3),
    {"expected_output_shape": (8, 3), "expected_num_trainable_weights": 0},
    id="tile_members_train_members",
  ),
  pytest.param(
    DenseBatchEnsemble,
    {
      "units": 6,
      "ensemble_size": 2,
      "activation": "gelu",
      "bias_initializer": "random_normal",
      "alpha_initializer": "normal",
      "fast_weight_stddev": 0.3,
      "kernel_regularizer": "l2",
    },
    _data(4, 3, 5),  # Tokens [M * B, T, D].
    {"expected_output_shape": (4, 3, 6), "expected_num_trainable_weights": 4},
    id="dense_tokens",
  ),
  pytest.param(
    DenseBatchEnsemble,
    {"units": 3, "ensemble_size": 2, "use_bias": False},
    _data(4, 5),
    {"expected_output_shape": (4, 3), "expected_num_trainable_weights": 3},
    id="dense_no_bias",
  ),
  pytest.param(
    Conv2DBatchEnsemble,
    {
      "filters": 4,
      "kernel_size": 3,
      "ensemble_size": 3,
      "strides": 2,
      "padding": "same",
      "activation": "relu",
      "bias_initializer": "random_normal",
    },
    _data(6, 6, 6, 2),
    {"expected_output_shape": (6, 3, 3, 4), "expected_num_trainable_weights": 4},
    id="conv2d",
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
    expected_num_seed_generators=0,
    mixed_precision_output_dtype="bfloat16",
    **expected,
  )


def _rng(seed=0):
  return np.random.default_rng(seed)


def _randomise(layer, rng):
  """Sets distinct random kernel, alpha, gamma and bias; returns them as a dict."""
  weights = {
    v.path.split("/")[-1]: rng.normal(size=v.shape).astype("float32") for v in layer.weights
  }
  for v in layer.weights:
    v.assign(weights[v.path.split("/")[-1]])
  return weights


def test_tile_members_row_layout_and_train_inference_counts():
  b = 2
  x = np.arange(b * 3, dtype="float32").reshape(b, 3)
  out = np.asarray(TileMembers(3)(x))
  assert out.shape == (3 * b, 3)
  for i in range(3):  # Member i owns rows [i*B, (i+1)*B).
    np.testing.assert_array_equal(out[i * b : (i + 1) * b], x)
  layer = TileMembers(4, train_members=2)
  assert np.asarray(layer(x)).shape == (4 * b, 3)
  assert np.asarray(layer(x, training=False)).shape == (4 * b, 3)
  train_out = np.asarray(layer(x, training=True))
  assert train_out.shape == (2 * b, 3)
  np.testing.assert_array_equal(train_out[b:], x)
  np.testing.assert_array_equal(np.asarray(TileMembers(4, train_members=1)(x, training=True)), x)
  assert TileMembers(3).compute_output_shape((2, 5)) == (6, 5)
  assert TileMembers(3, train_members=1).compute_output_shape((2, 5)) == (None, 5)


def test_tile_members_rejects_no_members():
  with pytest.raises(ValueError, match=r"num_members.*>= 1.*0"):
    TileMembers(0)
  with pytest.raises(ValueError, match="train_members"):
    TileMembers(2, train_members=0)


def test_dense_with_unit_fast_weights_is_keras_dense():
  m, b, d, units = 3, 2, 4, 5
  rng = _rng(1)
  x = np.tile(rng.normal(size=(b, d)).astype("float32"), (m, 1))
  dense = keras.layers.Dense(units)
  dense.build((None, d))
  w, bias = rng.normal(size=(d, units)).astype("float32"), rng.normal(size=units).astype("float32")
  dense.set_weights([w, bias])
  layer = DenseBatchEnsemble(units, m, alpha_initializer="ones", gamma_initializer="ones")
  layer.build((None, d))
  layer.kernel.assign(w)
  layer.bias.assign(np.tile(bias, (m, 1)))
  np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(dense(x)), atol=1e-5)


def _dense_by_hand(x, w, alpha, gamma, bias, m):
  xr = x.reshape((m, -1) + x.shape[1:])
  out = [np.tanh((xr[i] * alpha[i]) @ w * gamma[i] + bias[i]) for i in range(m)]
  return np.concatenate(out, axis=0)


@pytest.mark.parametrize("extra_dims", [(), (3,)])
def test_dense_random_fast_weights_match_numpy(extra_dims):
  m, b, d, units = 3, 2, 4, 5
  rng = _rng(2)
  x = rng.normal(size=(m * b, *extra_dims, d)).astype("float32")
  layer = DenseBatchEnsemble(units, m, activation="tanh")
  layer.build(x.shape)
  wt = _randomise(layer, rng)
  out = np.asarray(layer(x))
  assert out.shape == (m * b, *extra_dims, units) == layer.compute_output_shape(x.shape)
  np.testing.assert_allclose(
    out, _dense_by_hand(x, wt["kernel"], wt["alpha"], wt["gamma"], wt["bias"], m), atol=1e-5
  )
  # kernel_call uses the passed kernel with the layer's own fast weights and bias.
  other = rng.normal(size=(d, units)).astype("float32")
  np.testing.assert_allclose(
    np.asarray(layer.kernel_call(x, keras.ops.convert_to_tensor(other))),
    _dense_by_hand(x, other, wt["alpha"], wt["gamma"], wt["bias"], m),
    atol=1e-5,
  )
  assert not np.allclose(np.asarray(layer.kernel_call(x, other)), out)


def _conv_by_hand(x, w, alpha, gamma, bias, m, strides, padding):
  conv = keras.layers.Conv2D(
    w.shape[-1], w.shape[:2], strides=strides, padding=padding, use_bias=False
  )
  conv.build(x.shape)
  conv.kernel.assign(w)
  xr = x.reshape((m, -1) + x.shape[1:])
  out = [np.asarray(conv(xr[i] * alpha[i])) * gamma[i] + bias[i] for i in range(m)]
  return np.concatenate(out, axis=0)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_conv2d_matches_per_member_keras_conv(padding):
  m, b, hw, c, filters, strides = 2, 2, 5, 3, 4, 2
  rng = _rng(3)
  x = rng.normal(size=(m * b, hw, hw, c)).astype("float32")
  layer = Conv2DBatchEnsemble(filters, 3, m, strides=strides, padding=padding)
  layer.build(x.shape)
  wt = _randomise(layer, rng)
  out = np.asarray(layer(x))
  assert out.shape == layer.compute_output_shape(x.shape)
  expected = _conv_by_hand(
    x, wt["kernel"], wt["alpha"], wt["gamma"], wt["bias"], m, strides, padding
  )
  np.testing.assert_allclose(out, expected, atol=1e-4)
  other = rng.normal(size=wt["kernel"].shape).astype("float32")
  np.testing.assert_allclose(
    np.asarray(layer.kernel_call(x, other)),
    _conv_by_hand(x, other, wt["alpha"], wt["gamma"], wt["bias"], m, strides, padding),
    atol=1e-4,
  )


def test_conv2d_accepts_backbone_factory_arguments():
  init = keras.initializers.HeNormal(seed=0)
  layer = Conv2DBatchEnsemble(
    4,
    (3, 3),
    2,
    strides=(2, 2),
    padding="SAME",
    use_bias=False,
    kernel_initializer=init,
    bias_initializer="zeros",
  )
  out = layer(np.ones((4, 6, 6, 3), "float32"))
  assert out.shape == (4, 3, 3, 4)
  assert layer.bias is None and layer.kernel.shape == (3, 3, 3, 4) and layer.ensemble_size == 2
  assert sorted(v.path.split("/")[-1] for v in layer.trainable_weights) == [
    "alpha",
    "gamma",
    "kernel",
  ]


def test_fast_weight_initialiser_statistics():
  signs = np.asarray(RandomSign(0.5, seed=0)(shape=(200, 50)))
  assert set(np.unique(signs)) == {-1.0, 1.0}
  assert abs(signs.mean()) < 0.05
  mostly_plus = np.asarray(RandomSign(0.9, seed=1)(shape=(200, 50)))
  assert abs(mostly_plus.mean() - 0.8) < 0.05  # E = 0.9 - 0.1.
  np.testing.assert_array_equal(np.asarray(RandomSign(1.0)(shape=(3, 4))), 1.0)
  normal = np.asarray(NormalAroundOne(0.5, seed=2)(shape=(200, 50)))
  assert abs(normal.mean() - 1.0) < 0.03 and abs(normal.std() - 0.5) < 0.03
  with pytest.raises(ValueError, match="probability"):
    RandomSign(1.5)
  again = keras.initializers.deserialize(keras.initializers.serialize(NormalAroundOne(0.2, 3)))
  assert isinstance(again, NormalAroundOne) and again.stddev == 0.2


def test_layers_resolve_fast_weight_initialiser_names():
  layer = DenseBatchEnsemble(
    6, 4, alpha_initializer="normal", gamma_initializer="ones", fast_weight_stddev=0.2
  )
  layer.build((None, 50))
  assert isinstance(layer.alpha_initializer, NormalAroundOne)
  assert layer.alpha_initializer.stddev == 0.2
  np.testing.assert_array_equal(np.asarray(layer.gamma), 1.0)
  alpha = np.asarray(layer.alpha)
  assert alpha.shape == (4, 50) and abs(alpha.mean() - 1.0) < 0.1 and alpha.std() > 0.1
  default = Conv2DBatchEnsemble(8, 1, 4)
  default.build((None, 2, 2, 20))
  assert isinstance(default.alpha_initializer, RandomSign)
  assert set(np.unique(np.asarray(default.alpha))) == {-1.0, 1.0}
  assert set(np.unique(np.asarray(default.gamma))) == {-1.0, 1.0}
  assert default.alpha.shape == (4, 20) and default.gamma.shape == (4, 8)


def test_errors_for_no_members_and_untiled_batch():
  with pytest.raises(ValueError, match=">= 1"):
    DenseBatchEnsemble(3, ensemble_size=0)
  with pytest.raises(ValueError, match=">= 1"):
    Conv2DBatchEnsemble(3, 3, ensemble_size=0)
  with pytest.raises(ValueError, match="not divisible.*TileMembers"):
    DenseBatchEnsemble(3, ensemble_size=3)(np.zeros((4, 2), "float32"))
  with pytest.raises(ValueError, match="not divisible"):
    Conv2DBatchEnsemble(3, 1, ensemble_size=2)(np.zeros((3, 2, 2, 1), "float32"))


def test_one_fit_step_moves_every_weight():
  m, b = 2, 4
  inp = keras.Input((4, 4, 2))
  h = TileMembers(m)(inp)
  conv = Conv2DBatchEnsemble(
    3, 3, m, padding="same", activation="tanh", bias_initializer="random_normal"
  )
  dense = DenseBatchEnsemble(2, m, bias_initializer="random_normal")
  h = dense(keras.layers.GlobalAveragePooling2D()(conv(h)))
  model = keras.Model(inp, MemberAxis(m)(h))
  model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
  rng = _rng(6)
  x = rng.normal(size=(b, 4, 4, 2)).astype("float32")
  y = rng.normal(size=(b, m, 2)).astype("float32")
  before = {v.path: np.asarray(v).copy() for v in model.trainable_weights}
  assert len(before) == 8
  model.fit(x, y, batch_size=b, epochs=1, verbose=0)
  for v in model.trainable_weights:  # SGD: a moved weight had a non-zero gradient.
    assert np.abs(np.asarray(v) - before[v.path]).max() > 1e-6, v.path


# --- Per-member BatchNorm (ub use_ensemble_bn, edward2 EnsembleSyncBatchNorm) --------------


@pytest.mark.parametrize(
  "init_kwargs, data",
  [
    ({"ensemble_size": 2, "momentum": 0.9, "epsilon": 1e-5}, _data(4, 3, 3, 5)),
    ({"ensemble_size": 3, "gamma_initializer": "zeros", "center": True}, _data(6, 4)),
  ],
  ids=["conv_maps", "vectors"],
)
def test_batchnorm_harness(init_kwargs, data, tmp_path):
  # gamma and beta [M, C] trainable; moving mean and variance [M, C] not.
  report = run_layer_test(
    BatchNormBatchEnsemble,
    init_kwargs,
    data,
    tmp_path=tmp_path,
    expected_output_shape=data.shape,
    expected_num_trainable_weights=2,
    expected_num_non_trainable_weights=2,
    expected_num_seed_generators=0,
    mixed_precision_output_dtype="bfloat16",
  )
  assert report.layer.moving_mean.shape == (init_kwargs["ensemble_size"], data.shape[-1])


def _numpy_ensemble_bn(x, m, gamma, beta, mean=None, var=None, eps=1e-5):
  """edward2 EnsembleSyncBatchNorm on one replica, written out per member in NumPy."""
  x = x.astype(np.float64)
  rows = x.shape[0] // m
  out, means, variances = np.empty_like(x), [], []
  for i in range(m):
    xi = x[i * rows : (i + 1) * rows]
    mu = xi.mean(axis=tuple(range(xi.ndim - 1))) if mean is None else mean[i]
    v = (xi**2).mean(axis=tuple(range(xi.ndim - 1))) - mu**2 if var is None else var[i]
    out[i * rows : (i + 1) * rows] = (xi - mu) / np.sqrt(v + eps) * gamma[i] + beta[i]
    means.append(mu)
    variances.append(v)
  return out, np.stack(means), np.stack(variances)


def test_batchnorm_per_member_training_and_inference_match_numpy():
  m, b, c = 3, 4, 5
  rng = _rng(2)
  # Members with very different statistics, so pooled statistics would be visibly wrong.
  x = np.concatenate(
    [rng.normal(loc=3 * i, scale=1 + i, size=(b, 2, 2, c)) for i in range(m)]
  ).astype("float32")
  layer = BatchNormBatchEnsemble(m, momentum=0.9, epsilon=1e-5)
  layer.build(x.shape)
  gamma, beta = rng.normal(size=(m, c)), rng.normal(size=(m, c))
  layer.gamma.assign(gamma.astype("float32"))
  layer.beta.assign(beta.astype("float32"))

  out = np.asarray(layer(x, training=True))
  expected, mean, var = _numpy_ensemble_bn(x, m, gamma, beta)
  np.testing.assert_allclose(out, expected, atol=1e-4)
  # Moving statistics: momentum * moving + (1 - momentum) * batch (moving starts at 0 / 1).
  np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mean, atol=1e-5)
  np.testing.assert_allclose(layer.moving_variance.numpy(), 0.9 + 0.1 * var, atol=1e-4)
  pooled, _, _ = _numpy_ensemble_bn(x, 1, gamma[:1], beta[:1])
  assert np.abs(out - pooled).max() > 0.1  # Not one BatchNorm over all members.

  # Inference: each member's moving statistics, the batch itself is not used.
  moving_mean, moving_var = rng.normal(size=(m, c)), rng.uniform(0.5, 2.0, size=(m, c))
  layer.moving_mean.assign(moving_mean.astype("float32"))
  layer.moving_variance.assign(moving_var.astype("float32"))
  expected, _, _ = _numpy_ensemble_bn(x, m, gamma, beta, moving_mean, moving_var)
  np.testing.assert_allclose(np.asarray(layer(x, training=False)), expected, atol=1e-4)
  np.testing.assert_allclose(layer.moving_mean.numpy(), moving_mean, atol=1e-7)  # Unchanged.
  layer.trainable = False  # Frozen: inference mode even in a training call (as Keras BN).
  np.testing.assert_allclose(np.asarray(layer(x, training=True)), expected, atol=1e-4)


def test_batchnorm_with_one_member_is_keras_batchnorm():
  x = _data(6, 3, 3, 4, seed=4)
  ours = BatchNormBatchEnsemble(1, momentum=0.9, epsilon=1e-5)
  ref = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
  for training in (True, False, True):
    np.testing.assert_allclose(
      np.asarray(ours(x, training=training)), np.asarray(ref(x, training=training)), atol=1e-5
    )
  np.testing.assert_allclose(
    ours.moving_variance.numpy()[0], ref.moving_variance.numpy(), atol=1e-6
  )


def test_batchnorm_errors():
  with pytest.raises(ValueError, match="ensemble_size must be an int >= 1, got 0"):
    BatchNormBatchEnsemble(0)
  with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1.5"):
    BatchNormBatchEnsemble(2, momentum=1.5)
  with pytest.raises(ValueError, match="epsilon must be > 0, got 0"):
    BatchNormBatchEnsemble(2, epsilon=0)
  with pytest.raises(ValueError, match="not divisible by ensemble_size=2"):
    BatchNormBatchEnsemble(2)(_data(3, 4))
  with pytest.raises(ValueError, match="rank >= 2 with known channels"):
    BatchNormBatchEnsemble(2).build((4,))
