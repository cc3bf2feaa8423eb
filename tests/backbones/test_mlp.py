"""Tests for the residual MLP backbone (`keras_unc.backbones.mlp`) and its use by methods."""

import functools

import gin
import keras
import numpy as np
import pytest

from keras_unc import config, methods
from keras_unc.backbones import default_dense, mlp
from keras_unc.layers.batch_ensemble import DenseBatchEnsemble, TileMembers
from keras_unc.layers.spectral_norm import SpectralNormalization
from keras_unc.methods import modifiers
from keras_unc.training import trainer as train_lib
from keras_unc.training.network import build_network
from tests.methods.test_methods import _members, _small


def _points(batch=4, dim=2, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, dim)).astype("float32")


def _all_layers(model):
  for layer in model.layers:
    yield layer
    if isinstance(layer, keras.Model):
      yield from _all_layers(layer)


def test_structure_and_parameter_count():
  model = mlp(16, 3, input_dim=2, dropout=0.0)
  dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
  assert [layer.name for layer in dense] == ["input_dense"] + [
    f"block{i}_mlp_dense_1" for i in range(3)
  ]
  # Frozen input projection (2 -> 16), trainable residual blocks (16 -> 16, with bias).
  assert sum(int(np.prod(w.shape)) for w in model.non_trainable_weights) == 2 * 16 + 16
  assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 3 * (16 * 16 + 16)
  assert tuple(model(_points()).shape) == (4, 16)


def test_residual_math_matches_numpy():
  model = mlp(8, 2, input_dim=3, activation="relu", dropout=0.0)
  x = _points(5, 3)
  w0, b0 = model.get_layer("input_dense").get_weights()
  h = x @ w0 + b0
  for i in range(2):
    w, b = model.get_layer(f"block{i}_mlp_dense_1").get_weights()
    h = h + np.maximum(h @ w + b, 0.0)
  np.testing.assert_allclose(np.asarray(model(x)), h, rtol=1e-5, atol=1e-5)


def test_image_inputs_are_flattened():
  model = mlp(8, 1, image_size=1, num_channels=2, dropout=0.0)
  x = _points(3)
  assert tuple(model.input.shape) == (None, 1, 1, 2)
  vector = mlp(8, 1, input_dim=2, dropout=0.0)
  vector.set_weights(model.get_weights())
  np.testing.assert_allclose(np.asarray(model(x[:, None, None, :])), np.asarray(vector(x)))


def test_dense_factory_builds_every_dense():
  calls = []

  def dense_factory(units, *, name, block=None, **kwargs):
    calls.append((name, block, kwargs.get("activation")))
    return default_dense(units, name=name, block=block, **kwargs)

  mlp(8, 2, input_dim=2, activation="tanh", dense_factory=dense_factory)
  assert calls == [
    ("input_dense", None, None),
    ("block0_mlp_dense_1", 0, "tanh"),
    ("block1_mlp_dense_1", 1, "tanh"),
  ]


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(width=0), "width"),
    (dict(depth=-1), "depth"),
    (dict(activation="sigmoidal"), "activation"),
    (dict(dropout=1.0), "dropout"),
    (dict(input_dim=0), "input_dim"),
    (dict(input_dim=None), "input_dim=d"),
    (dict(tile_members=2, tile_before_block=5), "tile_before_block"),
    (dict(dropout_rate=1.0), "dropout_rate"),
    (dict(batchnorm_factory=lambda **kw: None), "no BatchNorm"),
    (dict(filterwise_dropout=True), "no channels"),
  ],
)
def test_bad_arguments(kwargs, match):
  args = dict(width=8, depth=2, input_dim=2) | kwargs
  with pytest.raises(ValueError, match=match):
    mlp(**args)


def test_mc_dropout_in_the_residual_branches():
  model = mlp(
    8, 2, input_dim=2, dropout=0.0, dropout_rate=0.5, tile_members=3, tile_train_members=1
  )
  x = _points(4)
  samples = np.asarray(model(x, training=False)).reshape(3, 4, 8)
  assert np.abs(samples[0] - samples[1]).max() > 1e-4  # Always on: samples differ.
  assert tuple(model(x, training=True).shape) == (4, 8)  # One sample in training.
  assert [layer.name for layer in model.layers if "mc_dropout" in layer.name] == [
    "block0_mc_dropout",
    "block1_mc_dropout",
  ]


def _network(method, width=8, depth=2):
  backbone = functools.partial(mlp, width, depth, dropout=0.0)
  return build_network(
    method, 2, (1, 1, 2), backbone=backbone, image_size=1, num_channels=2, value_range=(0, 255)
  )


def test_sngp_normalises_every_dense():
  net = _network(methods.SNGP(spectral_norm=modifiers.SpectralNorm(norm_bound=0.95)), 16, 3)
  layers = list(_all_layers(net))
  wrapped = [layer for layer in layers if isinstance(layer, SpectralNormalization)]
  assert len(wrapped) == 4  # input projection + 3 residual blocks
  assert not [layer for layer in layers if type(layer) is keras.layers.Dense]
  x = _points(6)[:, None, None, :]
  net(x, training=True)
  for layer in wrapped:  # Converged power iteration: u = the top right-singular vector.
    _, s, vt = np.linalg.svd(np.asarray(layer.layer.kernel))
    layer.u.assign(vt[0])
    raw = s[0]
    sigma = np.linalg.svd(np.asarray(layer.normalized_kernel()), compute_uv=False)[0]
    assert sigma == pytest.approx(min(raw, 0.95), rel=1e-3), layer.name
  out = net(x, training=False)
  assert tuple(out["logits"].shape) == (6, 1, 2) and tuple(out["gp_variance"].shape) == (6,)


def test_batchensemble_layers_and_members():
  net = _network(methods.BatchEnsemble(ensemble_size=2))
  layers = list(_all_layers(net.backbone))
  assert sum(isinstance(layer, TileMembers) for layer in layers) == 1
  assert sum(isinstance(layer, DenseBatchEnsemble) for layer in layers) == 1 + 2  # input, blocks
  logits = np.asarray(net(_points(3)[:, None, None, :], training=False)["logits"])
  assert logits.shape == (3, 2, 2)
  assert np.abs(logits[:, 0] - logits[:, 1]).max() > 1e-5
  # Chosen blocks only: the residual blocks' "_mlp_dense_" names match mlp_only=True.
  net = _network(methods.BatchEnsemble(ensemble_size=2, blocks=(1,)))
  chosen = [
    layer.name for layer in _all_layers(net.backbone) if isinstance(layer, DenseBatchEnsemble)
  ]
  assert chosen == ["block1_mlp_dense_1"]


class _Snapshot(keras.callbacks.Callback):
  """Backbone weights by path when training starts."""

  def on_train_begin(self, logs=None):
    net = self.model.network.backbone
    self.before = {w.path: w.numpy() for w in net.weights}


@pytest.mark.parametrize("name", ["deterministic", "sngp"])
def test_trains_through_the_trainer(name, tmp_path):
  gin.clear_config()
  keras.backend.clear_session()
  tiny = ["mlp.width = 8", "mlp.depth = 2", "toy_data.num_train = 64", "toy_data.num_test = 16"]
  tiny += ["train.batch_size = 16", "train.total_steps = 2"]
  if name == "sngp":
    tiny += ["gp_head.num_inducing = 16"]
  config.parse([f"benchmarks/toy_2d_{name}.gin"], tiny)
  snapshot = _Snapshot()
  try:
    result = train_lib.train(str(tmp_path), "train", callbacks=[snapshot])
  finally:
    gin.clear_config()
  net = result["network"]
  assert result["step"] == 2 and net.method_name == name
  after = {w.path: w.numpy() for w in net.backbone.weights}
  changed = {p for p in after if not np.array_equal(after[p], snapshot.before[p])}
  kernels = {p for p in after if p.endswith("/kernel")}
  blocks = {p for p in kernels if "block" in p}
  assert len(blocks) == 2 and blocks <= changed  # Residual blocks train.
  assert not {p for p in kernels if "input_dense" in p} & changed  # Frozen projection.
  out = net.predict(np.zeros((3, 1, 1, 2), "float32"), verbose=0)
  assert out["probs"].shape == (3, 2) and out["uncertainty"].shape == (3,)
  np.testing.assert_allclose(out["probs"].sum(-1), 1.0, rtol=1e-5)


# The classifiers of the registry (URL trains a representation, not on two classes).
CLASSIFIERS = sorted(set(methods.METHODS) - {"url"})


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_method_builds_on_the_mlp(name):
  gin.clear_config()
  gin.parse_config(
    ["het_head.num_factors = 1", "het_head.train_mc_samples = 4", "het_head.test_mc_samples = 4"]
    + ["gp_head.num_inducing = 16"]
  )
  try:
    method = _small(name)
    net = _network(method)
  finally:
    gin.clear_config()
  out = net(_points(4)[:, None, None, :], training=False)
  assert tuple(out["logits"].shape) == (4, _members(method), 2)
  assert tuple(out["probs"].shape) == (4, 2) and np.all(np.isfinite(np.asarray(out["probs"])))
