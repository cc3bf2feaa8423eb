"""Tests for the BiT ResNet-v2 backbone (`keras_unc.backbones.bit`).

Parameter count: BiT-M R50x1 without its head has 23,500,352 parameters (the figure of the
issue; with a 1000-class head 25,549,352, consistent with the 25.5 M timm lists for its
`resnetv2_50x1_bit` ImageNet models; with the 21,843-class ImageNet-21k head 68,256,659). The
test derives the number by hand from the architecture: conv kernels (no bias) plus GroupNorm
gamma/beta; BiT has no BatchNorm statistics.
"""

import functools

import keras
import numpy as np
import pytest

from keras_unc import config, methods
from keras_unc.backbones import bit_resnet, default_conv
from keras_unc.layers.batch_ensemble import TileMembers
from keras_unc.layers.spectral_norm import SpectralNormalization
from keras_unc.layers.std_conv import StdConv2D, StdConv2DBatchEnsemble
from keras_unc.methods import modifiers
from keras_unc.training.network import build_network

TINY = dict(depth=(1, 1, 1, 1), width=0.125, groups=4, image_size=32)


def _images(batch=2, size=32, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype("float32")


def _np(x):
  if isinstance(x, keras.Variable):
    x = x.value
  return keras.ops.convert_to_numpy(x)


def _hand_count(blocks, width=1):
  """Conv + GroupNorm parameters of a BiT ResNet-v2 (no head), from the architecture."""
  stem = int(64 * width)
  total = 7 * 7 * 3 * stem  # stem conv; no norm in the v2 stem
  c_in = stem
  for stage, units in enumerate(blocks):
    mid = stem * 2**stage
    out = 4 * mid
    for unit in range(units):
      stride = 2 if stage > 0 and unit == 0 else 1
      total += 2 * c_in  # gn1 on the unit input
      if c_in != out or stride != 1:
        total += c_in * out  # 1x1 projection, no norm
      total += c_in * mid + 2 * mid  # conv1, gn2
      total += 9 * mid * mid + 2 * mid  # conv2, gn3
      total += mid * out  # conv3
      c_in = out
  return total + 2 * c_in  # final GroupNorm


def test_parameter_count_r50x1():
  assert _hand_count((3, 4, 6, 3)) == 23_500_352
  # Parameter counts do not depend on the image size; 32 px keeps the build cheap.
  model = bit_resnet(50, image_size=32)
  assert model.count_params() == 23_500_352
  assert not model.non_trainable_weights
  assert tuple(model.output.shape) == (None, 2048)
  convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
  assert len(convs) == 1 + 16 * 3 + 4  # stem, 16 units x 3, one projection per stage
  assert all(type(conv) is StdConv2D and not conv.use_bias for conv in convs)
  norms = [layer for layer in model.layers if isinstance(layer, keras.layers.GroupNormalization)]
  assert len(norms) == 16 * 3 + 1
  assert all((gn.groups, gn.epsilon) == (32, 1e-5) for gn in norms)
  assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


@pytest.mark.parametrize(
  "depth,width,dim",
  [((1, 1, 1, 1), 0.125, 256), ((2, 1, 1, 1), 0.25, 512), ((1, 1, 1, 1), 0.5, 1024)],
)
def test_tiny_parameter_count_and_shape(depth, width, dim):
  model = bit_resnet(depth, width=width, groups=4, image_size=32)
  assert model.count_params() == _hand_count(depth, width)
  assert tuple(model(_images()).shape) == (2, dim)


def test_structure():
  model = bit_resnet(**TINY)
  layer = model.get_layer
  assert layer("stem_conv").kernel_size == (7, 7) and layer("stem_conv").strides == (2, 2)
  assert layer("stem_conv").filters == 8
  # 32 -> 16 (stem conv) -> 8 (pool) -> 8, 4, 2, 1 (stages).
  assert tuple(layer("stem_pool").output.shape[1:3]) == (8, 8)
  assert tuple(layer("avg_pool").input.shape[1:3]) == (1, 1)
  for stage in (2, 3, 4):
    block = f"stage{stage}_block1"
    assert layer(f"{block}_conv1").strides == (1, 1)
    assert layer(f"{block}_conv2").strides == (2, 2)  # The stride sits in the 3x3 conv.
    assert layer(f"{block}_conv2").padding == "valid"  # after explicit (1, 1) padding
    assert layer(f"{block}_shortcut_conv").strides == (2, 2)
  assert layer("stage1_block1_conv2").strides == (1, 1)
  assert layer("stage1_block1_conv2").padding == "same"
  # ResNet-v2: the projection and conv1 see the pre-activated input (GN-ReLU).
  for name in ("shortcut_conv", "conv1"):
    assert layer(f"stage2_block1_{name}").input is layer("stage2_block1_relu1").output
  # The residual of a unit without projection is its raw input.
  deeper = bit_resnet((1, 2, 1, 1), width=0.125, groups=4, image_size=32)
  add = deeper.get_layer("stage2_block2_add")
  assert add.input[0] is deeper.get_layer("stage2_block1_add").output
  assert "stage2_block2_shortcut_conv" not in {lay.name for lay in deeper.layers}


def test_stem_matches_numpy():
  # Stem: pad 3, weight-standardised 7x7/2 conv, zero pad 1, 3x3/2 max pool (BiT authors'
  # code), checked by hand on a random input.
  model = bit_resnet(**TINY)
  stem = keras.Model(model.input, model.get_layer("stem_pool").output)
  rng = np.random.default_rng(1)
  raw = rng.normal(1.0, 2.0, size=(7, 7, 3, 8))
  model.get_layer("stem_conv").set_weights([raw.astype("float32")])
  x = rng.normal(size=(2, 32, 32, 3))

  w = raw - raw.mean(axis=(0, 1, 2), keepdims=True)
  w = w / np.sqrt((w**2).mean(axis=(0, 1, 2), keepdims=True) + 1e-10)
  xp = np.pad(x, [(0, 0), (3, 3), (3, 3), (0, 0)])
  conv = np.zeros((2, 16, 16, 8))
  for i in range(16):
    for j in range(16):
      conv[:, i, j] = np.einsum("bhwc,hwco->bo", xp[:, 2 * i : 2 * i + 7, 2 * j : 2 * j + 7], w)
  cp = np.pad(conv, [(0, 0), (1, 1), (1, 1), (0, 0)])
  expected = np.zeros((2, 8, 8, 8))
  for i in range(8):
    for j in range(8):
      expected[:, i, j] = cp[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(1, 2))
  np.testing.assert_allclose(_np(stem(x.astype("float32"))), expected, atol=1e-4)


def test_conv_factory_builds_every_conv():
  calls = []

  def conv_factory(filters, kernel_size, *, name, block=None, **kwargs):
    calls.append((name, block))
    assert kwargs["use_bias"] is False
    return default_conv(filters, kernel_size, name=name, block=block, **kwargs)

  model = bit_resnet(**{**TINY, "depth": (2, 1, 1, 1)}, conv_factory=conv_factory)
  convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
  assert sorted(name for name, _ in calls) == sorted(conv.name for conv in convs)
  assert all(type(conv) is StdConv2D for conv in convs)  # default_conv's Conv2D, standardised
  assert calls[0] == ("stem_conv", None)
  for name, block in calls[1:]:
    assert name.startswith(block + "_")
  assert len({block for _, block in calls[1:]}) == 5


def test_errors():
  with pytest.raises(ValueError, match="Unknown BiT ResNet depth 34"):
    bit_resnet(34)
  with pytest.raises(ValueError, match="groups=32 must divide"):
    bit_resnet((1, 1, 1, 1), width=0.25)  # 16 stem channels
  with pytest.raises(ValueError, match="is not a block"):
    bit_resnet(**TINY, tile_members=2, tile_before_block="stage1_block2")

  def dense_like(units, kernel_size, *, name, block=None, **kwargs):
    return keras.layers.Dense(units, name=name)

  with pytest.raises(TypeError, match="Cannot weight-standardise Dense"):
    bit_resnet(**TINY, conv_factory=dense_like)


def _all_layers(model):
  for layer in model.layers:
    yield layer
    if isinstance(layer, keras.Model):
      yield from _all_layers(layer)
    if isinstance(layer, keras.layers.Wrapper):
      yield layer.layer


def _network(method):
  backbone = functools.partial(bit_resnet, (1, 1, 1, 1), width=0.125, groups=4)
  return build_network(method, 10, (32, 32, 3), backbone=backbone, image_size=32)


NUM_CONVS = 1 + 4 * 3 + 4  # TINY: stem, 4 units x 3, 4 projections


@pytest.mark.parametrize(
  "make,members,inner,wrapped",
  [
    (lambda: methods.SNGP(), 1, StdConv2D, True),
    (lambda: methods.BatchEnsemble(ensemble_size=2), 2, StdConv2DBatchEnsemble, False),
    (
      lambda: methods.BESNGP(ensemble=modifiers.Ensemble(ensemble_size=2)),
      2,
      StdConv2DBatchEnsemble,
      True,
    ),
  ],
  ids=["sngp", "batchensemble", "be_sngp"],
)
def test_modifiers_wrap_standardised_convs(make, members, inner, wrapped):
  net = _network(make())
  layers = list(_all_layers(net))
  assert sum(type(layer) is inner for layer in layers) == NUM_CONVS
  assert not [layer for layer in layers if type(layer) is keras.layers.Conv2D]
  sn = [layer for layer in layers if isinstance(layer, SpectralNormalization)]
  assert len(sn) == (NUM_CONVS if wrapped else 0)
  assert all(type(layer.layer) is inner for layer in sn)
  assert sum(isinstance(layer, TileMembers) for layer in layers) == (members > 1)
  logits = np.asarray(net(_images(3), training=False)["logits"])
  assert logits.shape == (3, members, 10)
  assert np.all(np.isfinite(logits))
  if members > 1:
    assert np.abs(logits[:, 0] - logits[:, 1]).max() > 1e-5


def test_keras_round_trip(tmp_path):
  model = bit_resnet(**TINY)
  rng = np.random.default_rng(3)
  for weight in model.weights:  # Non-trivial GroupNorm gamma/beta too.
    weight.assign(rng.normal(size=weight.shape).astype("float32"))
  images = _images()
  expected = _np(model(images))
  path = str(tmp_path / "bit.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  np.testing.assert_allclose(_np(loaded(images)), expected, rtol=1e-5, atol=1e-5)
  for a, b in zip(model.weights, loaded.weights):  # Raw kernels, not standardised ones.
    np.testing.assert_array_equal(_np(a), _np(b))


def test_keras_round_trip_be_sngp(tmp_path):
  # The deepest nesting: SpectralNormalization(StdConv2DBatchEnsemble) in every conv.
  net = _network(methods.BESNGP(ensemble=modifiers.Ensemble(ensemble_size=2)))
  images = _images(2)
  net(images, training=True)  # Move the power-iteration vectors.
  expected = _np(net(images, training=False)["logits"])
  path = str(tmp_path / "bit_be_sngp.keras")
  net.save(path)
  loaded = keras.saving.load_model(path)
  np.testing.assert_allclose(
    _np(loaded(images, training=False)["logits"]), expected, rtol=1e-5, atol=1e-5
  )


def test_gin_file():
  config.parse(["backbones/bit_r50x1.gin"], [], finalize=False)
  assert config.value("build_network.backbone").selector == "bit_resnet"
  assert config.value("build_network.image_size") == 224
  for name, expected in [("depth", 50), ("width", 1)]:
    assert config.value(f"bit_resnet.{name}") == expected
  # The bindings reach the backbone through build_network (small sizes for speed).
  config.parse(
    [], ["bit_resnet.depth = (1, 1, 1, 1)", "bit_resnet.width = 0.125", "bit_resnet.groups = 4"]
  )
  net = build_network(methods.Deterministic(), 10, (224, 224, 3))
  assert net.backbone.name == "bit_resnet"
  assert tuple(net.backbone.input.shape) == (None, 224, 224, 3)
  assert tuple(net.backbone.output.shape) == (None, 256)
