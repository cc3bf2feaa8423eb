"""Tests for the Wide ResNet backbone (`keras_unc.backbones.wide_resnet`).

Published count: uncertainty-baselines' CIFAR-10 WRN-28-10 (`ub.models.wide_resnet(depth=28,
width_multiplier=10, num_classes=10, version=2)`) has 36,479,194 parameters: conv kernels
without bias, BN gamma/beta (the moving statistics are buffers in Torch and non-trainable
in Keras, so we compare trainable parameters) and a 10-class Dense head with bias.
"""

import functools

import keras
import numpy as np
import pytest

from keras_unc import config, methods
from keras_unc.backbones import default_conv, wide_resnet
from keras_unc.layers.batch_ensemble import Conv2DBatchEnsemble, TileMembers
from keras_unc.layers.spectral_norm import SpectralNormalization
from keras_unc.training.network import build_network

TINY = dict(depth=10, width_multiplier=1, image_size=16)


def _images(batch=2, size=16, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype("float32")


def _num_trainable(model):
  return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _convs(model):
  return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def _hand_count(depth, k, classes):
  """Trainable parameters of WRN-depth-k + a `classes` head, from the architecture."""
  blocks = (depth - 4) // 6
  total = 3 * 3 * 3 * 16  # stem conv
  c_in = 16
  for filters in (16 * k, 32 * k, 64 * k):
    for b in range(blocks):
      stride = 2 if filters != 16 * k and b == 0 else 1
      total += 2 * c_in  # bn1 (gamma, beta)
      total += 9 * c_in * filters + 2 * filters + 9 * filters * filters  # conv1, bn2, conv2
      if c_in != filters or stride != 1:
        total += c_in * filters  # 1x1 projection shortcut
      c_in = filters
  total += 2 * c_in  # final BN
  return total + c_in * classes + classes


@pytest.mark.parametrize("depth,k,published", [(28, 10, 36_479_194), (16, 4, None)])
def test_parameter_count(depth, k, published):
  # Parameter counts do not depend on the image size; 8 px keeps the build cheap.
  backbone = wide_resnet(depth, k, image_size=8)
  model = keras.Model(backbone.input, keras.layers.Dense(10)(backbone.output))
  assert _num_trainable(model) == _hand_count(depth, k, 10)
  if published is not None:
    assert _num_trainable(model) == published
  # Non-trainable: BN moving mean and variance (2 per channel), every BN of the network.
  bn_channels = sum(
    layer.gamma.shape[0]
    for layer in backbone.layers
    if isinstance(layer, keras.layers.BatchNormalization)
  )
  assert model.count_params() == _num_trainable(model) + 2 * bn_channels


def test_output_shape_and_structure():
  model = wide_resnet(**TINY)
  assert model.name == "wide_resnet"
  assert tuple(model(_images()).shape) == (2, 64)
  assert tuple(model.get_layer("avg_pool").input.shape[1:3]) == (4, 4)  # 16 -> 16 -> 8 -> 4
  # WRN-10-1: one block per group; 16 -> 16 channels at stride 1 needs no projection.
  names = {layer.name for layer in _convs(model)}
  assert names == {
    "stem_conv",
    "stage1_block1_conv1",
    "stage1_block1_conv2",
    "stage2_block1_conv1",
    "stage2_block1_conv2",
    "stage2_block1_shortcut_conv",
    "stage3_block1_conv1",
    "stage3_block1_conv2",
    "stage3_block1_shortcut_conv",
  }
  for conv in _convs(model):
    assert not conv.use_bias and conv.padding == "same"
    assert conv.kernel_initializer.__class__.__name__ == "HeNormal"
  assert model.get_layer("stage2_block1_conv1").strides == (2, 2)
  assert model.get_layer("stage2_block1_conv2").strides == (1, 1)
  assert model.get_layer("stage2_block1_shortcut_conv").strides == (2, 2)
  assert model.get_layer("stage2_block1_shortcut_conv").kernel_size == (1, 1)
  for bn in (layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)):
    assert (bn.momentum, bn.epsilon) == (0.9, 1e-5)
  # Pre-activation: BN-ReLU-conv; the shortcut projects the block input itself (ub).
  stage2 = model.get_layer("stage2_block1_shortcut_conv")
  assert stage2.input is model.get_layer("stage1_block1_add").output
  assert (
    model.get_layer("stage2_block1_conv1").input is model.get_layer("stage2_block1_relu1").output
  )
  # A wider first group needs a projection in stage1_block1 too (WRN-28-10: 16 -> 160).
  wide = wide_resnet(10, 2, image_size=16)
  assert wide.get_layer("stage1_block1_shortcut_conv").filters == 32
  assert tuple(wide.output.shape) == (None, 128)


def test_conv_factory_builds_every_conv():
  calls = []

  def conv_factory(filters, kernel_size, *, name, block=None, **kwargs):
    calls.append((name, block))
    return default_conv(filters, kernel_size, name=name, block=block, **kwargs)

  model = wide_resnet(16, 1, image_size=16, conv_factory=conv_factory)
  assert sorted(name for name, _ in calls) == sorted(layer.name for layer in _convs(model))
  assert ("stem_conv", None) in calls
  for name, block in calls[1:]:
    assert name.startswith(block + "_")
  assert sorted({block for _, block in calls[1:]}) == [
    f"stage{s}_block{b}" for s in (1, 2, 3) for b in (1, 2)
  ]


@pytest.mark.parametrize("depth", [8, 11, 27, "28"])
def test_bad_depth(depth):
  with pytest.raises(ValueError, match="6 \\* N \\+ 4"):
    wide_resnet(depth, 1)


def test_bad_tile_before_block():
  with pytest.raises(ValueError, match="stage1_block1"):
    wide_resnet(**TINY, tile_members=2, tile_before_block="stage4_block1")


def _network(method):
  # build_network passes image_size, num_channels and the method's overrides.
  backbone = functools.partial(wide_resnet, 10, 1)
  return build_network(method, 10, (16, 16, 3), backbone=backbone, image_size=16)


def _all_layers(model):
  for layer in model.layers:
    yield layer
    if isinstance(layer, keras.Model):
      yield from _all_layers(layer)


def test_sngp_wraps_every_conv():
  net = _network(methods.SNGP())
  layers = list(_all_layers(net))
  wrapped = [layer for layer in layers if isinstance(layer, SpectralNormalization)]
  assert not [layer for layer in layers if isinstance(layer, keras.layers.Conv2D)]
  assert len(wrapped) == 9  # stem + 3 blocks x 2 convs + 2 projections
  out = net(_images(3), training=False)
  assert tuple(out["logits"].shape) == (3, 1, 10)


def test_batchensemble_wraps_every_conv():
  net = _network(methods.BatchEnsemble(ensemble_size=2))
  layers = list(_all_layers(net))
  assert sum(isinstance(layer, TileMembers) for layer in layers) == 1
  assert sum(isinstance(layer, Conv2DBatchEnsemble) for layer in layers) == 9
  logits = np.asarray(net(_images(3), training=False)["logits"])
  assert logits.shape == (3, 2, 10)
  assert np.abs(logits[:, 0] - logits[:, 1]).max() > 1e-5


def test_tile_before_block():
  model = wide_resnet(**TINY, tile_members=2, tile_before_block="stage2_block1")
  order = [layer.name for layer in model.layers]
  assert order.index("stage1_block1_add") < order.index("tile_members")
  assert order.index("tile_members") < order.index("stage2_block1_bn1")
  assert tuple(model(_images(3)).shape) == (6, 64)


def test_keras_round_trip(tmp_path):
  model = wide_resnet(**TINY)
  rng = np.random.default_rng(2)
  for layer in model.layers:  # Non-trivial BN statistics so inference depends on them.
    if isinstance(layer, keras.layers.BatchNormalization):
      c = layer.gamma.shape[0]
      layer.set_weights(
        [
          rng.uniform(0.5, 1.5, c),
          rng.normal(0, 0.1, c),
          rng.normal(0, 0.1, c),
          rng.uniform(0.5, 1.5, c),
        ]
      )
  images = _images()
  expected = keras.ops.convert_to_numpy(model(images, training=False))
  path = str(tmp_path / "wrn.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  actual = keras.ops.convert_to_numpy(loaded(images, training=False))
  np.testing.assert_allclose(actual, expected, atol=1e-6)


def test_gin_file():
  config.parse(["backbones/wrn28_10.gin"], [], finalize=False)
  assert config.value("build_network.backbone").selector == "wide_resnet"
  assert config.value("build_network.image_size") == 32
  for name, expected in [("depth", 28), ("width_multiplier", 10)]:
    assert config.value(f"wide_resnet.{name}") == expected
  # The bindings reach the backbone through build_network (small sizes for speed).
  config.parse([], ["wide_resnet.depth = 10", "wide_resnet.width_multiplier = 1"])
  net = build_network(methods.Deterministic(), 10, (32, 32, 3))
  assert net.backbone.name == "wide_resnet"
  assert tuple(net.backbone.input.shape) == (None, 32, 32, 3)
  assert tuple(net.backbone.output.shape) == (None, 64)


def test_mc_dropout_placement_follows_ub_wide_resnet_dropout():
  from keras_unc.layers.mc_dropout import MCDropout

  def drops(**kwargs):
    model = wide_resnet(10, 1, image_size=16, **kwargs)
    return {l.name: l for l in model.layers if isinstance(l, MCDropout)}

  everywhere = drops(dropout_rate=0.1, filterwise_dropout=True)
  blocks = ("stage1_block1", "stage2_block1", "stage3_block1")
  expected = {"stem_dropout"} | {f"{b}_dropout{i}" for b in blocks for i in (1, 2, 3)}
  expected |= {"stage2_block1_shortcut_dropout", "stage3_block1_shortcut_dropout"}
  assert set(everywhere) == expected
  assert all(d.noise_shape == (None, 1, 1, None) for d in everywhere.values())
  residual = drops(dropout_rate=0.1, residual_dropout=True)
  assert set(residual) == {f"{b}_residual_dropout" for b in blocks}
  assert not drops()
  with pytest.raises(ValueError, match=r"dropout_rate must be a float in \[0, 1\)"):
    drops(dropout_rate=1.0)
