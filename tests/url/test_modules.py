"""Uncertainty-module layers: the shared harness and math by hand in NumPy."""

import keras
import numpy as np
import pytest

from keras_unc.layers.heteroscedastic import HetXLDense
from keras_unc.methods.url.modules import (
  EmbeddingNormUncertainty,
  HetXLWithLogDet,
  JensenShannonUncertainty,
  PredNet,
  UncertaintyRescale,
)
from tests.layers.helpers import run_layer_test


def _softplus(x):
  return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def _x(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype("float32")


# Weight counts by hand. PredNet: depth hidden Dense layers and one output Dense, each with a
# trainable kernel and bias. EmbeddingNormUncertainty and JensenShannonUncertainty: none.
# UncertaintyRescale: non-trainable scale, seen and running_mean, plus the URL losses' seed
# generator. HetXLWithLogDet: the wrapped HetXLDense's classifier, diag and scale Dense layers
# (kernel and bias each), one seed generator, random logits.
HARNESS_CASES = [
  pytest.param(
    PredNet,
    {"width": 4, "depth": 2, "kernel_initializer": "he_normal"},
    _x(5, 6),
    {
      "expected_output_shape": (5,),
      "expected_num_trainable_weights": 6,
      "expected_num_non_trainable_weights": 0,
      "expected_num_seed_generators": 0,
    },
    id="pred_net",
  ),
  pytest.param(
    PredNet,
    {"width": 3, "depth": 1, "stop_gradient": True},
    _x(2, 6),
    {
      "expected_output_shape": (2,),
      "expected_num_trainable_weights": 4,
      "expected_num_non_trainable_weights": 0,
      "expected_num_seed_generators": 0,
    },
    id="pred_net_stop_gradient",
  ),
  pytest.param(
    EmbeddingNormUncertainty,
    {},
    _x(3, 4),
    {
      "expected_output_shape": (3,),
      "expected_num_trainable_weights": 0,
      "expected_num_non_trainable_weights": 0,
      "expected_num_seed_generators": 0,
    },
    id="embedding_norm",
  ),
  pytest.param(
    JensenShannonUncertainty,
    {},
    _x(4, 3, 5),
    {
      "expected_output_shape": (4,),
      "expected_num_trainable_weights": 0,
      "expected_num_non_trainable_weights": 0,
      "expected_num_seed_generators": 0,
    },
    id="jensen_shannon",
  ),
  pytest.param(
    UncertaintyRescale,
    {"target": 0.5, "init_batches": 2, "seed": 4},
    np.abs(_x(4)) + 0.1,
    {
      "expected_output_shape": (4,),
      "expected_num_trainable_weights": 0,
      "expected_num_non_trainable_weights": 3,
      "expected_num_seed_generators": 1,
    },
    id="uncertainty_rescale",  # Caught a bfloat16 autocast bug of its float32 state.
  ),
  pytest.param(
    HetXLWithLogDet,
    {"het": HetXLDense(4, num_factors=2, train_mc_samples=3, test_mc_samples=8, seed=0)},
    _x(3, 6),
    {
      "expected_output_shape": ((3, 4), (3,)),
      "expected_num_trainable_weights": 6,
      "expected_num_non_trainable_weights": 0,
      "expected_num_seed_generators": 1,
      "deterministic": False,
      "atol": 1e-5,
    },
    id="hetxl_with_log_det",
  ),
]


@pytest.mark.parametrize("layer_cls, init_kwargs, input_data, expected", HARNESS_CASES)
def test_layer_harness(layer_cls, init_kwargs, input_data, expected, tmp_path):
  run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    tmp_path=tmp_path,
    mixed_precision_output_dtype="float32",  # Every module returns a float32 uncertainty.
    **expected,
  )


def test_pred_net_is_an_mlp_with_leaky_relu_and_softplus():
  x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
  layer = PredNet(width=4, depth=2)
  out = np.asarray(layer(x))
  h = x
  for dense in layer.hidden:
    h = h @ np.asarray(dense.kernel) + np.asarray(dense.bias)
    h = np.where(h > 0, h, 0.01 * h)
  by_hand = _softplus(h @ np.asarray(layer.out.kernel) + np.asarray(layer.out.bias))[:, 0] + 1e-6
  assert out.shape == (5,) and np.all(out > 0)
  np.testing.assert_allclose(out, by_hand, rtol=1e-5)


def test_pred_net_stop_gradient_blocks_the_embedding_gradient():
  import tensorflow as tf

  x = tf.constant(np.ones((2, 3), "float32"))
  for stop, expect_none in ((False, False), (True, True)):
    layer = PredNet(width=4, depth=1, stop_gradient=stop)
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = tf.reduce_sum(layer(x))
    assert (tape.gradient(y, x) is None) == expect_none


def test_pred_net_rejects_bad_sizes():
  with pytest.raises(ValueError, match="width >= 1 and depth >= 1"):
    PredNet(width=0)


def test_embedding_norm_is_inverse_norm():
  x = np.array([[3.0, 4.0], [0.0, 0.5]], "float32")
  np.testing.assert_allclose(np.asarray(EmbeddingNormUncertainty()(x)), [0.2, 2.0], rtol=1e-6)


def test_jensen_shannon_by_hand():
  logits = np.random.default_rng(1).normal(size=(4, 3, 5)).astype("float32")
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  mean = p.mean(1)
  by_hand = -(mean * np.log(mean)).sum(-1) + (p * np.log(p)).sum(-1).mean(1)
  np.testing.assert_allclose(np.asarray(JensenShannonUncertainty()(logits)), by_hand, atol=1e-6)
  np.testing.assert_allclose(np.asarray(JensenShannonUncertainty()(logits[:, :1])), 0, atol=1e-6)


def test_rescale_measures_the_first_batches_then_stays_fixed():
  layer = UncertaintyRescale(target=0.5, init_batches=2)
  a, b, c = (np.full((4,), v, "float32") for v in (1.0, 3.0, 100.0))
  np.testing.assert_allclose(np.asarray(layer(a, training=True)), 0.5)  # scale 0.5 / 1
  np.testing.assert_allclose(np.asarray(layer(b, training=True)), 3.0 * 0.5 / 2.0)  # mean 2
  np.testing.assert_allclose(np.asarray(layer(c, training=True)), 100.0 * 0.25)  # fixed now
  np.testing.assert_allclose(np.asarray(layer(c, training=False)), 100.0 * 0.25)
  assert float(layer.seen) == 2.0
  off = UncertaintyRescale(target=0.0)
  np.testing.assert_allclose(np.asarray(off(c, training=True)), 100.0)


def test_rescale_state_survives_the_keras_save(tmp_path):
  u = np.full((4,), 2.0, "float32")
  report = run_layer_test(
    UncertaintyRescale,
    {"target": 0.5, "init_batches": 3},
    u,
    tmp_path=tmp_path,
    expected_num_non_trainable_weights=3,
    run_mixed_precision_check=False,
  )
  # The harness made one training call before saving: scale = 0.5 / mean(u), seen = 1.
  again = report.loaded_layer
  assert float(again.scale) == pytest.approx(0.25) and float(again.seen) == 1.0
  assert float(again.running_mean) == pytest.approx(2.0)
  np.testing.assert_allclose(np.asarray(again(u)), 0.5)


def test_rescale_rejects_negative_target():
  with pytest.raises(ValueError, match="target >= 0"):
    UncertaintyRescale(target=-1.0)


def test_layers_are_registered_for_loading():
  for cls in (PredNet, EmbeddingNormUncertainty, JensenShannonUncertainty, UncertaintyRescale):
    assert keras.saving.get_registered_object(f"keras_unc>{cls.__name__}") is cls


def test_hetxl_with_log_det_matches_the_head():
  x = _x(3, 6, seed=2)
  layer = HetXLWithLogDet(HetXLDense(4, num_factors=2, test_mc_samples=8, seed=0))
  inp = keras.Input((6,))
  model = keras.Model(inp, layer(inp))
  logits, log_det = (np.asarray(t) for t in model(x))
  assert logits.shape == (3, 4)
  np.testing.assert_allclose(log_det, np.asarray(layer.het.covariance_log_det(x)), rtol=1e-6)
  # One copy of each head weight: classifier, diag and scale kernels and biases.
  assert len(model.weights) == len(layer.het.weights) == 6
