"""Predictor: one pass per split, labels aligned with outputs, Keras / SavedModel networks."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_unc.data.sources import ArraySource, _load_digits
from keras_unc.evaluators import Predictor, SavedModelNetwork
from keras_unc.evaluators.base import to_input_dtype
from keras_unc.runtime import distribute
from keras_unc.training import export
from tests.evaluators.helpers import FakeNet, digits, direct


@dataclasses.dataclass
class CountingSource(ArraySource):
  """Digits whose `load` counts how many times its examples are iterated."""

  iterations: int = 0

  def load(self, split):
    images, labels = self.arrays(split)

    def gen():
      self.iterations += 1
      for x, y in zip(images, labels):
        yield {"image": x, "label": y}

    return tf.data.Dataset.from_generator(
      gen,
      output_signature={
        "image": tf.TensorSpec(images.shape[1:], tf.uint8),
        "label": tf.TensorSpec([], tf.int64),
      },
    )


class EchoNet:
  """Returns the flattened image as embedding: shows which image each row came from."""

  def __call__(self, images, training=False):
    x = tf.reshape(tf.cast(images, tf.float32), [tf.shape(images)[0], -1])
    logits = x[:, None, :10]
    probs = tf.nn.softmax(x[:, :10])
    return {
      "logits": logits,
      "probs": probs,
      "uncertainty": 1 - tf.reduce_max(probs, -1),
      "embedding": x,
    }


def counting_digits():
  return CountingSource("digits", 10, (8, 8, 1), {"train": 1500, "test": 297}, _load_digits)


def test_single_pass_aligned_labels_and_cache():
  source = counting_digits()
  predictor = Predictor(EchoNet(), batch_size=64)  # 297 = 4 * 64 + 41: a partial batch.
  outputs, labels = predictor(source, "test")
  assert source.iterations == 1 and predictor.passes == 1
  images, want = digits("test")
  np.testing.assert_array_equal(labels, want)
  np.testing.assert_array_equal(outputs["embedding"], images.reshape(len(images), -1))
  assert outputs["logits"].shape == (297, 1, 10) and outputs["uncertainty"].shape == (297,)
  again, _ = predictor(source, "test")  # Cached within the round.
  assert again is outputs and source.iterations == 1
  predictor.reset()
  predictor(source, "test")
  assert source.iterations == 2
  predictor.reset()
  predictor(source, "test", cache=False)
  predictor(source, "test", cache=False)
  assert source.iterations == 4


def test_matches_network_called_directly():
  net = FakeNet(members=2)
  outputs, labels = Predictor(net, batch_size=100)("digits", "test")
  images, want = digits("test")
  np.testing.assert_array_equal(labels, want)
  for k, v in direct(net, images).items():
    np.testing.assert_allclose(outputs[k], v, rtol=1e-6, atol=1e-6, err_msg=k)


def _tiny_keras_network():
  images = keras.Input((8, 8, 1))
  x = keras.layers.Flatten()(images)
  emb = keras.layers.Dense(16, activation="tanh", name="emb")(x / 16.0)
  logits = keras.layers.Reshape((1, 10))(keras.layers.Dense(10, name="head")(emb))
  probs = keras.layers.Softmax()(keras.layers.Reshape((10,))(logits))
  unc = keras.layers.Lambda(lambda p: 1.0 - keras.ops.max(p, axis=-1))(probs)
  return keras.Model(
    images, {"logits": logits, "probs": probs, "uncertainty": unc, "embedding": emb}
  )


def test_keras_network_equals_predict_and_mirrored_strategy():
  keras.utils.set_random_seed(1)
  net = _tiny_keras_network()
  images, want = digits("test")
  bare = net.predict(images.astype(np.float32), batch_size=64, verbose=0)
  outputs, labels = Predictor(net, batch_size=64)("digits", "test")
  np.testing.assert_array_equal(labels, want)
  for k in bare:
    np.testing.assert_allclose(outputs[k], bare[k], rtol=1e-6, atol=1e-6, err_msg=k)
  strategy = distribute.get_strategy("mirrored")
  assert strategy.num_replicas_in_sync == 2
  with strategy.scope():
    mirrored = _tiny_keras_network()
  mirrored.set_weights(net.get_weights())
  outputs2, labels2 = Predictor(mirrored, batch_size=64)("digits", "test")
  np.testing.assert_array_equal(labels2, want)
  for k in bare:
    np.testing.assert_allclose(outputs2[k], bare[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_saved_model_network(tmp_path):
  keras.utils.set_random_seed(2)
  net = _tiny_keras_network()
  path = export.export_saved_model(net, str(tmp_path / "export"), (8, 8, 1))
  served = SavedModelNetwork(path)
  assert served.image_dtype == tf.uint8 and served.image_shape == (8, 8, 1)
  got, labels = Predictor(served, batch_size=128)("digits", "test")
  want, want_labels = Predictor(net, batch_size=128)("digits", "test")
  np.testing.assert_array_equal(labels, want_labels)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
  with pytest.raises(FileNotFoundError, match="No SavedModel"):
    SavedModelNetwork(str(tmp_path / "missing"))


def test_float_images_are_rounded_for_integer_inputs():
  x = tf.constant([[0.4, 0.6, 254.5, 300.0, -3.0]])
  np.testing.assert_array_equal(to_input_dtype(x, tf.uint8).numpy(), [[0, 1, 254, 255, 0]])
  assert to_input_dtype(tf.constant([1], tf.uint8), "float32").dtype == tf.float32
