"""Tests for the ResNet v1.5 backbone (`keras_unc.backbones.resnet`).

keras-hub's `ResNetBackbone` with `block_type="bottleneck_block"` (and
`"basic_block"`), `use_pre_activation=False` and a single 7x7 stem conv is
exactly torchvision's ResNet v1.5: stride in the 3x3 conv of the bottleneck,
symmetric zero padding before strided convs, 1x1 projection shortcuts with
BN, no conv biases, BN momentum 0.9 / eps 1e-5. So besides the published
parameter counts we check numerical parity with it by copying weights
(keras-hub has no global pooling in the backbone; we average its last
feature map).
"""

import keras
import numpy as np
import pytest

from keras_unc.backbones import default_conv, resnet

TINY = dict(depth=18, width=0.125, image_size=32, stem="cifar")


def _images(batch=2, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(batch, size, size, 3)).astype("float32")


def _num_trainable(model):
  return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _with_head(backbone, classes=1000):
  logits = keras.layers.Dense(classes)(backbone.output)
  return keras.Model(backbone.input, logits)


@pytest.mark.parametrize("depth,expected", [(50, 25_557_032), (18, 11_689_512)])
def test_parameter_count(depth, expected):
  # Published torchvision counts, which count BN gamma/beta but not the
  # running statistics (buffers): compare trainable parameters.
  model = _with_head(resnet(depth))
  assert _num_trainable(model) == expected


def _hub_name_to_ours(name):
  """Maps keras-hub ResNet layer names to ours."""
  if name.startswith("conv1_"):
    return "stem_" + name[len("conv1_") :]
  # "stack{s}_block{b}_{k}_{conv|bn}", s and b 0-based, k=0 is the shortcut.
  stack, block, index, kind = name.split("_")
  prefix = f"stage{int(stack[5:]) + 1}_block{int(block[5:]) + 1}"
  if index == "0":
    return f"{prefix}_shortcut_{kind}"
  return f"{prefix}_{kind}{index}"


@pytest.mark.parametrize("depth", [18, 50])
def test_parity_with_keras_hub(depth):
  keras_hub = pytest.importorskip("keras_hub")
  blocks = {18: [2, 2, 2, 2], 50: [3, 4, 6, 3]}[depth]
  hub = keras_hub.models.ResNetBackbone(
    input_conv_filters=[64],
    input_conv_kernel_sizes=[7],
    stackwise_num_filters=[64, 128, 256, 512],
    stackwise_num_blocks=blocks,
    stackwise_num_strides=[1, 2, 2, 2],
    block_type="bottleneck_block" if depth == 50 else "basic_block",
    use_pre_activation=False,
    image_shape=(64, 64, 3),
  )
  ours = resnet(depth, image_size=64)

  rng = np.random.default_rng(1)
  copied = set()
  for layer in hub.layers:
    if not layer.weights:
      continue
    if isinstance(layer, keras.layers.BatchNormalization):
      # Non-trivial BN parameters and statistics so the copy matters.
      channels = layer.gamma.shape[0]
      layer.set_weights(
        [
          rng.uniform(0.5, 1.5, channels),
          rng.normal(0, 0.1, channels),
          rng.normal(0, 0.1, channels),
          rng.uniform(0.5, 1.5, channels),
        ]
      )
    target = ours.get_layer(_hub_name_to_ours(layer.name))
    assert type(target) is type(layer)
    if isinstance(layer, keras.layers.Conv2D):
      assert target.strides == layer.strides, layer.name
    target.set_weights(layer.get_weights())
    copied.add(target.name)
  assert copied == {layer.name for layer in ours.layers if layer.weights}

  images = _images(size=64)
  features = keras.ops.convert_to_numpy(hub(images))
  expected = features.mean(axis=(1, 2))
  actual = keras.ops.convert_to_numpy(ours(images))
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_v1_5_stride_placement():
  model = resnet(50, width=0.125, image_size=64)

  def conv(name):
    return model.get_layer(name)

  for stage in (2, 3, 4):
    block = f"stage{stage}_block1"
    assert conv(f"{block}_conv1").kernel_size == (1, 1)
    assert conv(f"{block}_conv1").strides == (1, 1)
    assert conv(f"{block}_conv2").kernel_size == (3, 3)
    assert conv(f"{block}_conv2").strides == (2, 2)
    assert conv(f"{block}_conv3").strides == (1, 1)
    assert conv(f"{block}_shortcut_conv").strides == (2, 2)
    assert conv(f"stage{stage}_block2_conv2").strides == (1, 1)
  assert conv("stage1_block1_conv2").strides == (1, 1)
  assert conv("stage1_block1_shortcut_conv").strides == (1, 1)
  assert conv("stem_conv").strides == (2, 2)
  assert conv("stem_conv").kernel_size == (7, 7)


@pytest.mark.parametrize("stem,final_map", [("imagenet", (1, 1)), ("cifar", (4, 4))])
def test_output_shape(stem, final_map):
  model = resnet(18, width=0.25, image_size=32, stem=stem)
  assert isinstance(model, keras.Model)
  assert model.name == "resnet"
  assert tuple(model.get_layer("avg_pool").input.shape[1:3]) == final_map
  out = model(_images())
  assert tuple(out.shape) == (2, 128)
  has_pool = any(layer.name == "stem_pool" for layer in model.layers)
  assert has_pool == (stem == "imagenet")
  assert model.get_layer("stem_conv").kernel_size == ((7, 7) if stem == "imagenet" else (3, 3))


@pytest.mark.parametrize(
  "depth,width,dim",
  [(50, 0.125, 256), (50, 0.25, 512), (18, 0.125, 64), (18, 0.5, 256)],
)
def test_width_multiplier(depth, width, dim):
  model = resnet(depth, width=width, image_size=32, stem="cifar")
  assert tuple(model.output.shape) == (None, dim)
  stem_channels = model.get_layer("stem_conv").filters
  assert stem_channels == max(1, int(round(64 * width)))


def test_zero_init_residual():
  def gamma(model, name):
    return keras.ops.convert_to_numpy(model.get_layer(name).gamma)

  for depth, last in [(18, "bn2"), (50, "bn3")]:
    model = resnet(depth, width=0.125, image_size=32, stem="cifar")
    assert np.all(gamma(model, f"stage2_block1_{last}") == 0)
    assert np.all(gamma(model, "stage2_block1_bn1") == 1)
    assert np.all(gamma(model, "stage2_block1_shortcut_bn") == 1)
  model = resnet(18, width=0.125, image_size=32, stem="cifar", zero_init_residual=False)
  assert np.all(gamma(model, "stage2_block1_bn2") == 1)


@pytest.mark.parametrize("depth", [18, 50])
def test_conv_factory_builds_every_conv(depth):
  calls = []

  def conv_factory(filters, kernel_size, *, name, block=None, **kwargs):
    calls.append((name, block))
    assert kwargs["use_bias"] is False
    return default_conv(filters, kernel_size, name=name, block=block, **kwargs)

  model = resnet(
    depth,
    width=0.125,
    image_size=32,
    stem="cifar",
    conv_factory=conv_factory,
  )
  convs = {layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
  assert {name for name, _ in calls} == convs
  assert len(calls) == len(convs)
  assert ("stem_conv", None) in calls
  for name, block in calls:
    if name != "stem_conv":
      assert name.startswith(block + "_")
  blocks = sorted({block for _, block in calls if block is not None})
  expected_blocks = {18: 8, 50: 16}[depth]
  assert len(blocks) == expected_blocks
  assert "stage2_block1" in blocks and "stage4_block2" in blocks


def test_unknown_depth_error():
  with pytest.raises(ValueError) as info:
    resnet(42)
  message = str(info.value)
  assert "42" in message
  for depth in (18, 34, 50, 101, 152):
    assert str(depth) in message


def test_keras_round_trip(tmp_path):
  model = resnet(**TINY)
  # Non-trivial BN statistics so inference-mode outputs depend on them.
  rng = np.random.default_rng(2)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      channels = layer.gamma.shape[0]
      layer.set_weights(
        [
          rng.uniform(0.5, 1.5, channels),
          rng.normal(0, 0.1, channels),
          rng.normal(0, 0.1, channels),
          rng.uniform(0.5, 1.5, channels),
        ]
      )
  images = _images()
  expected = keras.ops.convert_to_numpy(model(images, training=False))
  path = str(tmp_path / "resnet.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  actual = keras.ops.convert_to_numpy(loaded(images, training=False))
  np.testing.assert_allclose(actual, expected, atol=1e-6)


# --- MC dropout in every block (ub resnet50_dropout) and the BatchNorm factory -------------


def _dropouts(model):
  from keras_unc.layers.mc_dropout import MCDropout

  return {layer.name: layer for layer in model.layers if isinstance(layer, MCDropout)}


def test_dropout_placement_follows_ub_resnet50_dropout():
  model = resnet(50, width=0.125, image_size=32, dropout_rate=0.05, filterwise_dropout=True)
  drops = _dropouts(model)
  blocks = [f"stage{s}_block{b}" for s, n in enumerate((3, 4, 6, 3), 1) for b in range(1, n + 1)]
  # ub: after the stem ReLU, after relu 2a and 2b of every bottleneck, after each projection
  # shortcut's BN (the first block of every stage); not after the last BN or the block output.
  expected = {"stem_dropout"} | {f"{b}_dropout{i}" for b in blocks for i in (1, 2)}
  expected |= {f"stage{s}_block1_shortcut_dropout" for s in range(1, 5)}
  assert set(drops) == expected
  assert all(d.rate == 0.05 and d.noise_shape == (None, 1, 1, None) for d in drops.values())
  for drop, source in [
    ("stem_dropout", "stem_relu"),
    ("stage2_block3_dropout1", "stage2_block3_relu1"),
    ("stage2_block3_dropout2", "stage2_block3_relu2"),
    ("stage3_block1_shortcut_dropout", "stage3_block1_shortcut_bn"),
  ]:
    assert model.get_layer(drop).input is model.get_layer(source).output
  basic = _dropouts(resnet(**TINY, dropout_rate=0.1))
  assert "stage1_block1_dropout1" in basic and "stage1_block1_dropout2" not in basic
  assert all(d.noise_shape is None for d in basic.values())
  assert not _dropouts(resnet(**TINY))  # dropout_rate = 0: no layer at all.


def test_dropout_stays_on_at_inference_and_weights_are_unchanged():
  plain, dropped = resnet(**TINY), resnet(**TINY, dropout_rate=0.3)
  assert _num_trainable(plain) == _num_trainable(dropped)
  images = _images()
  a = keras.ops.convert_to_numpy(dropped(images, training=False))
  b = keras.ops.convert_to_numpy(dropped(images, training=False))
  assert not np.allclose(a, b)


@pytest.mark.parametrize("rate", [1.0, -0.1, "0.1", True])
def test_bad_dropout_rate(rate):
  with pytest.raises(ValueError, match=r"dropout_rate must be a float in \[0, 1\)"):
    resnet(**TINY, dropout_rate=rate)


def test_batchnorm_factory_builds_every_batchnorm():
  from keras_unc.backbones.factories import default_batchnorm

  calls = []

  def batchnorm_factory(*, name, block=None, **kwargs):
    calls.append((name, block, kwargs["momentum"], kwargs["epsilon"]))
    return default_batchnorm(name=name, block=block, **kwargs)

  model = resnet(**TINY, batchnorm_factory=batchnorm_factory, bn_momentum=0.8)
  bns = {layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
  assert {c[0] for c in calls} == bns and len(calls) == len(bns)
  assert ("stem_bn", None, 0.8, 1e-5) in calls
  assert all(name.startswith(block + "_") for name, block, *_ in calls if block is not None)
