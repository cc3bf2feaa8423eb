"""Uncertainty-module layers: math by hand in NumPy and `.keras` round trips."""

import keras
import numpy as np
import pytest

from keras_unc.layers.uncertainty_modules import (EmbeddingNormUncertainty,
                                                  JensenShannonUncertainty, PredNet,
                                                  UncertaintyRescale)
from tests.layers.helpers import roundtrip


def _softplus(x):
  return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def test_pred_net_is_an_mlp_with_leaky_relu_and_softplus(tmp_path):
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
  again = roundtrip(layer, x, tmp_path)
  assert again.layers[-1].get_config()["width"] == 4


def test_pred_net_stop_gradient_blocks_the_embedding_gradient():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
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


def test_embedding_norm_is_inverse_norm(tmp_path):
  x = np.array([[3.0, 4.0], [0.0, 0.5]], "float32")
  np.testing.assert_allclose(np.asarray(EmbeddingNormUncertainty()(x)), [0.2, 2.0], rtol=1e-6)
  roundtrip(EmbeddingNormUncertainty(), x, tmp_path)


def test_jensen_shannon_by_hand(tmp_path):
  logits = np.random.default_rng(1).normal(size=(4, 3, 5)).astype("float32")
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  mean = p.mean(1)
  by_hand = -(mean * np.log(mean)).sum(-1) + (p * np.log(p)).sum(-1).mean(1)
  np.testing.assert_allclose(np.asarray(JensenShannonUncertainty()(logits)), by_hand, atol=1e-6)
  np.testing.assert_allclose(np.asarray(JensenShannonUncertainty()(logits[:, :1])), 0, atol=1e-6)
  roundtrip(JensenShannonUncertainty(), logits, tmp_path)


def test_rescale_measures_the_first_batches_then_stays_fixed(tmp_path):
  layer = UncertaintyRescale(target=0.5, init_batches=2)
  a, b, c = (np.full((4,), v, "float32") for v in (1.0, 3.0, 100.0))
  np.testing.assert_allclose(np.asarray(layer(a, training=True)), 0.5)  # scale 0.5 / 1
  np.testing.assert_allclose(np.asarray(layer(b, training=True)), 3.0 * 0.5 / 2.0)  # mean 2
  np.testing.assert_allclose(np.asarray(layer(c, training=True)), 100.0 * 0.25)  # fixed now
  np.testing.assert_allclose(np.asarray(layer(c, training=False)), 100.0 * 0.25)
  assert float(layer.seen) == 2.0
  off = UncertaintyRescale(target=0.0)
  np.testing.assert_allclose(np.asarray(off(c, training=True)), 100.0)
  again = roundtrip(layer, c, tmp_path)  # The scale is saved with the model.
  assert float(again.layers[-1].scale) == pytest.approx(0.25)


def test_rescale_rejects_negative_target():
  with pytest.raises(ValueError, match="target >= 0"):
    UncertaintyRescale(target=-1.0)


def test_layers_are_registered_for_loading():
  for cls in (PredNet, EmbeddingNormUncertainty, JensenShannonUncertainty, UncertaintyRescale):
    assert keras.saving.get_registered_object(f"keras_unc>{cls.__name__}") is cls


def test_hetxl_with_log_det_round_trips_and_matches_the_head(tmp_path):
  from keras_unc.layers.heteroscedastic import HetXLDense  # pylint: disable=import-outside-toplevel
  from keras_unc.layers.uncertainty_modules import HetXLWithLogDet  # pylint: disable=import-outside-toplevel
  x = np.random.default_rng(2).normal(size=(3, 6)).astype("float32")
  layer = HetXLWithLogDet(HetXLDense(4, num_factors=2, test_mc_samples=8, seed=0))
  inp = keras.Input((6,))
  model = keras.Model(inp, layer(inp))
  logits, log_det = (np.asarray(t) for t in model(x))
  assert logits.shape == (3, 4)
  np.testing.assert_allclose(log_det, np.asarray(layer.het.covariance_log_det(x)), rtol=1e-6)
  model.save(tmp_path / "m.keras")
  again = keras.saving.load_model(tmp_path / "m.keras")
  np.testing.assert_allclose(np.asarray(again(x)[1]), log_det, rtol=1e-6)
  assert len(again.weights) == len(model.weights)  # Each weight stored once.
