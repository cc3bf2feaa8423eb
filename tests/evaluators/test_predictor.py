"""Predictor: one pass per split, labels aligned with outputs, Keras / SavedModel networks,
every batch padded to one static shape (outputs as unpadded)."""

import dataclasses

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.ops import control_flow_util

from keras_unc import config
from keras_unc.data.sources import ArraySource, _load_digits
from keras_unc.evaluators import Predictor, SavedModelNetwork
from keras_unc.evaluators.base import pad_batches, to_input_dtype
from keras_unc.runtime import distribute
from keras_unc.training import export
from keras_unc.training.network import build_network
from tests.e2e.helpers import CLASSES, TINY
from tests.evaluators.helpers import FakeNet, digits, direct
from tests.scale.test_precision import COMMON, EXTRA
from tests.scale.test_xla import determinism_restored, xla_allowed  # noqa: F401 (fixtures)


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


class TraceRecorder(keras.layers.Layer):
  """Identity layer recording, each time it is traced or run, the input shape and whether
  it runs inside an XLA-compiled function."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.seen = []

  def call(self, x):
    graph = tf.compat.v1.get_default_graph()
    self.seen.append((tuple(x.shape), control_flow_util.GraphOrParentsInXlaContext(graph)))
    return x


def _recorded_network(seed):
  keras.utils.set_random_seed(seed)
  net = _tiny_keras_network()
  recorder = TraceRecorder()
  images = keras.Input((8, 8, 1))
  net = keras.Model(images, net(recorder(images)))
  recorder.seen.clear()  # (The symbolic call.)
  return net, recorder


@pytest.mark.usefixtures("xla_allowed")  # (Keras drops XLA under op determinism.)
@pytest.mark.parametrize("jit_compile", [False, True])
def test_padded_batches_are_static_and_equal_unpadded(jit_compile):
  # 297 = 2 x 128 + 41: the last batch is padded with 87 rows, masked out of the results.
  net, recorder = _recorded_network(4)
  images, want = digits("test")
  unpadded = net.predict(images.astype(np.float32), batch_size=128, verbose=0)  # As before.
  recorder.seen.clear()
  outputs, labels = Predictor(net, batch_size=128, jit_compile=jit_compile)("digits", "test")
  # One trace of one fully static batch shape (inside XLA when asked).
  assert recorder.seen == [((128, 8, 8, 1), jit_compile)]
  np.testing.assert_array_equal(labels, want)
  assert outputs.keys() == unpadded.keys()
  for k in unpadded:
    assert outputs[k].shape == unpadded[k].shape, k
    np.testing.assert_allclose(outputs[k], unpadded[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_padding_is_static_per_replica_under_mirrored_strategy():
  strategy = distribute.get_strategy("mirrored")
  assert strategy.num_replicas_in_sync == 2
  with strategy.scope():
    net, recorder = _recorded_network(5)
  # 100 rows over 2 replicas: 50 each; 297 = 2 x 100 + 97.
  outputs, labels = Predictor(net, batch_size=100)("digits", "test")
  assert {shape for shape, _ in recorder.seen} == {(50, 8, 8, 1)}
  np.testing.assert_array_equal(labels, digits("test")[1])
  assert outputs["probs"].shape == (297, 10)
  # An odd batch is rounded up to a multiple of the replicas (padding 101 -> 102).
  Predictor(net, batch_size=101)("digits", "test")
  assert recorder.seen[-1][0] == (51, 8, 8, 1)


def test_pad_batches_masks_padding_rows_of_any_label_shape():
  images = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
  soft = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]]
  ds = tf.data.Dataset.from_tensor_slices((images, soft)).batch(4)
  got = list(pad_batches(ds, 4).as_numpy_iterator())
  assert [valid.tolist() for _, _, valid in got] == [[True] * 4, [True] + [False] * 3]
  np.testing.assert_array_equal(got[1][0], [[8, 9], [0, 0], [0, 0], [0, 0]])
  np.testing.assert_array_equal(got[1][1][0], soft[4])
  assert pad_batches(ds, 4).element_spec[1].shape == (4, 3)


# Methods that draw noise at inference. With TensorFlow's (non-XLA) kernels a draw of shape
# [B, ...] gives its first rows the same values whatever B (measured), so padding leaves the
# real rows' samples alone when the noise is drawn per row (heteroscedastic: [B, S, N]); a
# draw over a member- or sample-major tiled batch [M x B, ...] (MC dropout's samples, Plex,
# rank-1 and variational members) gives the last batch's real rows other samples, equal in
# distribution. (XLA's normal draws depend on the whole shape: under jit_compile every
# sampling method's last batch gets other samples.)
SAMPLING = {"heteroscedastic": True, "mc_dropout": False}  # Last batch unchanged?


@pytest.mark.parametrize("name", sorted(SAMPLING))
def test_padding_and_inference_samples(name):
  gin.clear_config()
  config.parse([TINY], COMMON + EXTRA.get(name, []) + [f"train.method = @{CLASSES[name]}()"])
  keras.utils.set_random_seed(0)
  net = build_network(config.value("train.method").scoped_configurable_fn(), 10, (8, 8, 1))
  gin.clear_config()
  state = [v.numpy() for v in net.variables]  # The seed generators' state included.
  images = digits("test")[0].astype(np.float32)
  call = tf.function(lambda x: net(x, training=False))
  unpadded = [call(images[i : i + 128])["logits"].numpy() for i in range(0, 297, 128)]
  for v, s in zip(net.variables, state):
    v.assign(s)
  padded = Predictor(net, batch_size=128)("digits", "test")[0]["logits"]
  np.testing.assert_array_equal(padded[:256], np.concatenate(unpadded[:2]))
  same = np.allclose(padded[256:], unpadded[2], rtol=1e-5, atol=1e-5)
  assert same == SAMPLING[name], np.abs(padded[256:] - unpadded[2]).max()
