"""SpectralNormalization wrapper: the shared harness, σ against NumPy, outputs by hand, u state,
gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_unc.layers.batch_ensemble import DenseBatchEnsemble
from keras_unc.layers.spectral_norm import SpectralNormalization
from tests.layers.helpers import run_layer_test


@keras.saving.register_keras_serializable(package="keras_unc_test")
class _KernelCallDense(keras.layers.Layer):
  """Stand-in for a BatchEnsemble layer: a `kernel` and `kernel_call(inputs, kernel)`."""

  def __init__(self, units, **kwargs):
    super().__init__(**kwargs)
    self.units = units

  def build(self, input_shape):
    self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")

  def kernel_call(self, inputs, kernel):
    return 2.0 * ops.matmul(inputs, kernel) - 1.0

  def call(self, inputs):
    return self.kernel_call(inputs, self.kernel)

  def compute_output_shape(self, input_shape):
    return (*input_shape[:-1], self.units)

  def get_config(self):
    return {**super().get_config(), "units": self.units}


def _matrix_with_singular_values(rows, cols, singular, seed=0):
  rng = np.random.default_rng(seed)
  u, _ = np.linalg.qr(rng.normal(size=(rows, rows)))
  v, _ = np.linalg.qr(rng.normal(size=(cols, cols)))
  s = np.zeros((rows, cols))
  s[np.arange(len(singular)), np.arange(len(singular))] = singular
  return (u @ s @ v.T).astype("float32")


def _dense(kernel, bias, norm_bound, activation=None, power_iterations=1):
  layer = SpectralNormalization(
    keras.layers.Dense(kernel.shape[1], activation=activation),
    norm_bound=norm_bound,
    power_iterations=power_iterations,
  )
  layer.build((None, kernel.shape[0]))
  layer.layer.kernel.assign(kernel)
  layer.layer.bias.assign(bias)
  return layer


def _x(shape, seed=1):
  return np.random.default_rng(seed).normal(size=shape).astype("float32")


# Weight counts by hand: the wrapped layer's trainable weights (Dense / Conv2D: kernel and
# bias; _KernelCallDense: kernel; DenseBatchEnsemble: kernel, alpha, gamma, bias) plus the
# wrapper's one non-trainable power-iteration vector u.
HARNESS_CASES = [
  pytest.param(
    {"layer": keras.layers.Dense(3, activation="tanh"), "norm_bound": 0.5},
    _x((4, 5)),
    {"expected_output_shape": (4, 3), "expected_num_trainable_weights": 2},
    id="dense",
  ),
  pytest.param(
    {"layer": keras.layers.Conv2D(2, 3, strides=2, padding="same"), "power_iterations": 2},
    _x((2, 5, 5, 1)),
    {"expected_output_shape": (2, 3, 3, 2), "expected_num_trainable_weights": 2},
    id="conv2d",
  ),
  pytest.param(
    {"layer": _KernelCallDense(3), "norm_bound": 1.0, "power_iterations": 3},
    _x((3, 4)),
    {"expected_output_shape": (3, 3), "expected_num_trainable_weights": 1},
    id="kernel_call",
  ),
  pytest.param(
    {"layer": DenseBatchEnsemble(3, ensemble_size=2), "norm_bound": 0.9},
    _x((4, 5)),
    {"expected_output_shape": (4, 3), "expected_num_trainable_weights": 4},
    id="batch_ensemble",
  ),
]


@pytest.mark.parametrize("init_kwargs, input_data, expected", HARNESS_CASES)
def test_layer_harness(init_kwargs, input_data, expected, tmp_path):
  run_layer_test(
    SpectralNormalization,
    init_kwargs,
    input_data,
    tmp_path=tmp_path,
    expected_num_non_trainable_weights=1,
    expected_num_seed_generators=0,
    mixed_precision_output_dtype="bfloat16",
    atol=1e-5,
    **expected,
  )


def test_sigma_converges_to_numpy_norm_and_output_is_rescaled_dense():
  w = _matrix_with_singular_values(6, 4, [3.0, 1.2, 0.5, 0.1])
  b = np.linspace(-1, 1, 4).astype("float32")
  sigma_true = np.linalg.norm(w, 2)
  layer = _dense(w, b, norm_bound=0.8)
  x = _x((5, 6))
  for _ in range(30):
    layer(x, training=True)
  np.testing.assert_allclose(float(layer.spectral_norm()), sigma_true, rtol=1e-5)
  expected = x @ (w * min(1.0, 0.8 / sigma_true)) + b
  np.testing.assert_allclose(np.asarray(layer(x)), expected, atol=1e-5)
  np.testing.assert_allclose(np.asarray(layer(x, training=True)), expected, atol=1e-5)


def test_bound_above_sigma_gives_the_plain_layer_with_activation():
  w = _matrix_with_singular_values(5, 3, [1.5, 0.7, 0.2])
  b = np.array([0.1, -0.2, 0.3], "float32")
  layer = _dense(w, b, norm_bound=4.0, activation="relu", power_iterations=5)
  x = _x((4, 5))
  layer(x, training=True)
  np.testing.assert_allclose(np.asarray(layer(x)), np.maximum(x @ w + b, 0.0), atol=1e-6)


def test_conv2d_equals_keras_conv_with_rescaled_kernel():
  conv = keras.layers.Conv2D(3, 3, strides=2, padding="same", activation="tanh")
  layer = SpectralNormalization(conv, norm_bound=0.5, power_iterations=20)
  x = _x((2, 7, 7, 2))
  layer.build(x.shape)
  kernel = _matrix_with_singular_values(18, 3, [2.0, 0.8, 0.3]).reshape(3, 3, 2, 3)
  conv.kernel.assign(kernel)
  conv.bias.assign(np.array([0.3, -0.1, 0.2], "float32"))
  out = np.asarray(layer(x, training=True))
  sigma_true = np.linalg.norm(kernel.reshape(-1, 3), 2)  # [kh·kw·c_in, c_out] convention.
  np.testing.assert_allclose(sigma_true, 2.0, rtol=1e-5)
  np.testing.assert_allclose(float(layer.spectral_norm()), sigma_true, rtol=1e-4)
  plain = keras.layers.Conv2D(3, 3, strides=2, padding="same", activation="tanh")
  plain.build(x.shape)
  plain.set_weights([kernel * 0.5 / sigma_true, conv.bias.numpy()])
  assert out.shape == (2, 4, 4, 3)
  np.testing.assert_allclose(out, np.asarray(plain(x)), atol=1e-5)


def test_kernel_call_layer_is_wrapped():
  w = _matrix_with_singular_values(4, 3, [2.0, 1.0, 0.5])
  layer = SpectralNormalization(_KernelCallDense(3), norm_bound=1.0, power_iterations=20)
  layer.build((None, 4))
  layer.layer.kernel.assign(w)
  x = _x((3, 4))
  out = np.asarray(layer(x, training=True))
  np.testing.assert_allclose(out, 2.0 * x @ (w / 2.0) - 1.0, atol=1e-5)


def test_u_updates_only_in_training_and_kernel_is_never_assigned():
  layer = SpectralNormalization(keras.layers.Dense(3), power_iterations=1)
  x = _x((4, 5))
  layer(x)
  kernel_before, u0 = layer.layer.kernel.numpy().copy(), layer.u.numpy().copy()
  np.testing.assert_allclose(np.linalg.norm(u0), 1.0, rtol=1e-6)
  layer(x, training=False)
  layer(x)
  np.testing.assert_array_equal(layer.u.numpy(), u0)
  layer(x, training=True)
  assert np.abs(layer.u.numpy() - u0).max() > 1e-4
  np.testing.assert_allclose(np.linalg.norm(layer.u.numpy()), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(layer.layer.kernel.numpy(), kernel_before)


def test_gradient_flows_through_sigma_to_the_kernel():
  w = _matrix_with_singular_values(4, 3, [2.5, 1.0, 0.3])
  c = 1.0
  layer = _dense(w, np.zeros(3, "float32"), norm_bound=c, power_iterations=30)
  x, g = _x((5, 4)), _x((5, 3), seed=2)
  layer(x, training=True)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(layer(x, training=True) * g)
  grad = tape.gradient(loss, layer.layer.kernel.value)
  np.testing.assert_array_equal(layer.layer.kernel.numpy(), w)
  # L = <G, c W / σ(W)>, G = xᵀ g, ∂σ/∂W = u₁ v₁ᵀ (top singular vectors).
  big_g = x.T @ g
  left, s, right = np.linalg.svd(w)
  sigma = s[0]
  expected = c / sigma * big_g - c / sigma**2 * np.sum(big_g * w) * np.outer(left[:, 0], right[0])
  assert np.abs(grad.numpy()).max() > 1e-3
  np.testing.assert_allclose(grad.numpy(), expected, atol=1e-4)


def test_keras_round_trip_keeps_the_trained_u_and_config(tmp_path):
  conv = keras.layers.Conv2D(
    2, 3, padding="same", activation="relu", kernel_initializer=keras.initializers.GlorotUniform(1)
  )
  x = _x((2, 5, 5, 1))
  report = run_layer_test(
    SpectralNormalization,
    {"layer": conv, "norm_bound": 0.3, "power_iterations": 30},
    x,
    tmp_path=tmp_path,
    expected_num_trainable_weights=2,
    expected_num_non_trainable_weights=1,
    run_mixed_precision_check=False,
    run_training_check=False,
    atol=1e-5,
  )
  layer, again = report.layer, report.loaded_layer
  assert isinstance(again.layer, keras.layers.Conv2D)
  assert (again.norm_bound, again.power_iterations) == (0.3, 30)
  # The harness made one training call before saving: 30 power iterations took u to the top
  # right singular vector of the [kh·kw·c_in, c_out] kernel matrix, and the save kept it.
  _, s, vt = np.linalg.svd(layer.layer.kernel.numpy().reshape(-1, 2))
  assert s[0] / s[1] > 1.5  # Premise: 30 steps shrink the error like (s1 / s0)^60.
  u = layer.u.numpy()
  np.testing.assert_allclose(abs(float(u @ vt[0])), 1.0, atol=1e-5)
  np.testing.assert_array_equal(again.u.numpy(), u)
  np.testing.assert_allclose(float(again.spectral_norm()), s[0], rtol=1e-5)


def test_mirrored_strategy_update_matches_one_device():
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  w = _matrix_with_singular_values(4, 3, [2.0, 1.0, 0.5])
  x = _x((4, 4))
  with strategy.scope():
    layer = _dense(w, np.zeros(3, "float32"), norm_bound=1.0)
  u0 = layer.u.numpy().copy()
  dist_x = strategy.experimental_distribute_values_from_function(
    lambda ctx: x[2 * ctx.replica_id_in_sync_group : 2 * ctx.replica_id_in_sync_group + 2]
  )
  out = strategy.run(tf.function(lambda inputs: layer(inputs, training=True)), args=(dist_x,))
  out = np.concatenate([t.numpy() for t in strategy.experimental_local_results(out)])
  ref = _dense(w, np.zeros(3, "float32"), norm_bound=1.0)
  ref.u.assign(u0)
  np.testing.assert_allclose(out, np.asarray(ref(x, training=True)), atol=1e-5)
  np.testing.assert_allclose(layer.u.numpy(), ref.u.numpy(), atol=1e-6)
  assert np.abs(layer.u.numpy() - u0).max() > 1e-4


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"norm_bound": 0.0}, "norm_bound"),
    ({"norm_bound": -1.0}, "norm_bound"),
    ({"power_iterations": 0}, "power_iterations"),
    ({"power_iterations": 1.5}, "power_iterations"),
  ],
)
def test_invalid_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    SpectralNormalization(keras.layers.Dense(2), **kwargs)


def test_unsupported_layer_lists_supported_ones():
  with pytest.raises(TypeError, match="Dense.*Conv2D.*kernel_call"):
    SpectralNormalization(keras.layers.LayerNormalization())
  with pytest.raises(TypeError, match="kernel_call"):
    SpectralNormalization(keras.layers.DepthwiseConv2D(3))
