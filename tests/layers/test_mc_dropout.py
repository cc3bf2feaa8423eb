"""MC dropout and shallow-ensemble heads: the shared harness, statistics, math by hand, errors."""

import keras
import numpy as np
import pytest

from keras_unc.layers.mc_dropout import MCDropout
from keras_unc.layers.shallow_ensemble import ShallowEnsembleHead
from tests.layers.helpers import run_layer_test


def _x(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype("float32")


# Weight counts by hand: MCDropout has none (one seed generator, random at inference);
# ShallowEnsembleHead holds the trainable kernel [M, D, C] and bias [M, C].
HARNESS_CASES = [
  pytest.param(
    MCDropout,
    {"rate": 0.4, "seed": 3},
    _x(5, 6),
    {
      "expected_output_shape": (5, 6),
      "expected_num_trainable_weights": 0,
      "expected_num_seed_generators": 1,
      "deterministic": False,
    },
    id="mc_dropout",
  ),
  pytest.param(
    MCDropout,
    {"rate": 0.3, "seed": 1, "noise_shape": (None, 1, 1, None)},
    _x(2, 3, 3, 4),
    {
      "expected_output_shape": (2, 3, 3, 4),
      "expected_num_trainable_weights": 0,
      "expected_num_seed_generators": 1,
      "deterministic": False,
    },
    id="mc_dropout_filterwise",
  ),
  pytest.param(
    ShallowEnsembleHead,
    {"num_classes": 4, "num_heads": 3, "bias_initializer": "ones"},
    _x(2, 5),
    {
      "expected_output_shape": (2, 3, 4),
      "expected_num_trainable_weights": 2,
      "expected_num_seed_generators": 0,
    },
    id="shallow_ensemble",
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
    mixed_precision_output_dtype="bfloat16",
    **expected,
  )


def test_mc_dropout_is_active_at_inference_with_inverted_scaling():
  rate = 0.3
  layer = MCDropout(rate, seed=0)
  x = np.ones((200, 50), "float32")
  first = np.asarray(layer(x, training=False))
  second = np.asarray(layer(x))
  assert not np.array_equal(first, second)
  for out in (first, second):
    zeros = out == 0
    assert abs(zeros.mean() - rate) < 0.03
    np.testing.assert_allclose(out[~zeros], 1.0 / (1.0 - rate), rtol=1e-6)
    assert abs(out.mean() - 1.0) < 0.03  # Mean preserved.


def test_mc_dropout_stays_on_in_predict_and_rate_zero_is_identity():
  x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
  inp = keras.Input((8,))
  model = keras.Model(inp, MCDropout(0.5, seed=1)(inp))
  out = model.predict(x, verbose=0)
  assert 0.3 < (out == 0).mean() < 0.7
  np.testing.assert_array_equal(np.asarray(MCDropout(0.0)(x)), x)


def test_mc_dropout_seed_is_reproducible():
  x = np.ones((4, 16), "float32")
  a = np.asarray(MCDropout(0.5, seed=7)(x))
  b = np.asarray(MCDropout(0.5, seed=7)(x))
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_mc_dropout_rate_errors(rate):
  with pytest.raises(ValueError, match=rf"rate must be in \[0, 1\), got {rate}"):
    MCDropout(rate)


def test_shallow_ensemble_equals_separate_linear_maps():
  b, d, c, m = 3, 5, 4, 3
  rng = np.random.default_rng(0)
  x = rng.normal(size=(b, d)).astype("float32")
  layer = ShallowEnsembleHead(c, m)
  layer(x)
  assert layer.kernel.shape == (m, d, c) and layer.bias.shape == (m, c)
  kernel = np.asarray(layer.kernel)
  for i in range(1, m):  # Heads are initialised independently.
    assert not np.allclose(kernel[0], kernel[i])
  layer.bias.assign(rng.normal(size=(m, c)).astype("float32"))
  out = np.asarray(layer(x))
  assert out.shape == (b, m, c)
  for i in range(m):
    np.testing.assert_allclose(out[:, i], x @ kernel[i] + np.asarray(layer.bias)[i], atol=1e-5)
  limit = np.sqrt(6.0 / (d + c))  # Glorot fans of one [D, C] head, not of [M, D, C].
  assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > np.sqrt(6.0 / (m * (d + c)))
  seeded = []
  for _ in range(2):
    head = ShallowEnsembleHead(c, m, kernel_initializer=keras.initializers.GlorotUniform(seed=1))
    head.build(x.shape)
    seeded.append(np.asarray(head.kernel))
  np.testing.assert_array_equal(seeded[0], seeded[1])  # Reproducible ...
  assert not np.allclose(seeded[0][0], seeded[0][1])  # ... and still distinct heads.


def test_shallow_ensemble_errors():
  with pytest.raises(ValueError, match="num_heads must be an int >= 1, got 0"):
    ShallowEnsembleHead(4, 0)
  with pytest.raises(ValueError, match="num_classes must be an int >= 1, got 0"):
    ShallowEnsembleHead(0, 2)


def test_filterwise_dropout_zeroes_whole_channels_per_example():
  rate = 0.4
  layer = MCDropout(rate, seed=2, noise_shape=(None, 1, 1, None))
  x = np.ones((64, 5, 5, 16), "float32")
  out = np.asarray(layer(x, training=False))
  dropped = (out == 0).all(axis=(1, 2))  # [B, C]: a channel is all zero ...
  kept = np.isclose(out, 1.0 / (1.0 - rate)).all(axis=(1, 2))  # ... or all kept.
  assert (dropped ^ kept).all()
  assert abs(dropped.mean() - rate) < 0.05
  assert not (dropped == dropped[:1]).all()  # Masks differ between examples.
  unitwise = np.asarray(MCDropout(rate, seed=2)(x))
  assert not ((unitwise == 0).all(axis=(1, 2)) ^ (unitwise != 0).all(axis=(1, 2))).all()


def test_noise_shape_errors():
  with pytest.raises(ValueError, match="noise_shape must hold ints >= 1 or None"):
    MCDropout(0.1, noise_shape=(None, 0))
  with pytest.raises(ValueError, match="noise_shape .* has 4 axes, the inputs 2"):
    MCDropout(0.1, noise_shape=(None, 1, 1, None))(_x(2, 3))
