"""ResNet v1.5 backbone.

A functional Keras implementation of the residual networks of
[Deep Residual Learning for Image Recognition](https://arxiv.org/abs/1512.03385)
(He et al., CVPR 2016) in the "v1.5" form used by torchvision and most modern
baselines: in a downsampling bottleneck block the stride sits in the 3x3 conv,
not in the first 1x1 conv. Depths 18 and 34 use basic blocks, 50, 101 and 152
bottleneck blocks (expansion 4).

Padding follows torchvision (symmetric zero padding before every strided
conv), so the layer shapes and outputs match torchvision and
`keras_hub.models.ResNetBackbone` (`block_type="bottleneck_block"`) for the
same weights; Keras' `padding="same"` would pad (0, 1) instead of (1, 1) at
stride 2 and shift the sampling grid.

Every `Conv2D` is created by `conv_factory` (see
`keras_unc.backbones.factories`):

* stem: `"stem_conv"`, `block=None`;
* residual block `b` of stage `s` (both 1-based, stage 1 is torchvision's
  `layer1`): `block="stage{s}_block{b}"`, names `"stage{s}_block{b}_conv1"`,
  `..._conv2`, (`..._conv3` for bottlenecks) and
  `"stage{s}_block{b}_shortcut_conv"` for the projection shortcut.

Every `BatchNormalization` is created by `batchnorm_factory` with the `block` of the
conv before it (names `"stem_bn"`, `"stage{s}_block{b}_bn{i}"`,
`"stage{s}_block{b}_shortcut_bn"`), so BatchEnsemble can give each member its own.

Example:
```python
from keras_unc.backbones import resnet

backbone = resnet(50)  # [B, 224, 224, 3] -> [B, 2048]
wide = resnet(50, width=2)  # ResNet-50w2 (SimCLR), [B, 4096]
cifar = resnet(18, image_size=32, stem="cifar")
```
"""

import gin
import keras

from keras_unc.backbones.factories import default_batchnorm, default_conv

# depth -> (block type, number of blocks per stage).
RESNET_DEPTHS = {
  18: ("basic", (2, 2, 2, 2)),
  34: ("basic", (3, 4, 6, 3)),
  50: ("bottleneck", (3, 4, 6, 3)),
  101: ("bottleneck", (3, 4, 23, 3)),
  152: ("bottleneck", (3, 8, 36, 3)),
}
_STAGE_FILTERS = (64, 128, 256, 512)
_STAGE_STRIDES = (1, 2, 2, 2)
_BOTTLENECK_EXPANSION = 4


def _conv_initializer():
  # torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), a
  # plain (not truncated) normal with variance 2 / fan_out.
  return keras.initializers.VarianceScaling(
    scale=2.0, mode="fan_out", distribution="untruncated_normal"
  )


def _conv_bn(
  x,
  filters,
  kernel_size,
  strides,
  *,
  conv_name,
  bn_name,
  block,
  conv_factory,
  batchnorm_factory,
  bn_momentum,
  bn_epsilon,
  zero_gamma=False,
):
  """Conv (no bias) -> BatchNorm, with torch-style padding."""
  if strides > 1 and kernel_size > 1:
    x = keras.layers.ZeroPadding2D((kernel_size - 1) // 2, name=f"{conv_name}_pad")(x)
    padding = "valid"
  else:
    # Stride 1 (any odd kernel) or 1x1 kernels: "same" pads symmetrically
    # or not at all, exactly like torch.
    padding = "same"
  x = conv_factory(
    filters,
    kernel_size,
    name=conv_name,
    block=block,
    strides=strides,
    padding=padding,
    use_bias=False,
    kernel_initializer=_conv_initializer(),
  )(x)
  return batchnorm_factory(
    name=bn_name,
    block=block,
    momentum=bn_momentum,
    epsilon=bn_epsilon,
    gamma_initializer="zeros" if zero_gamma else "ones",
  )(x)


def _dropout(x, rate, filterwise, name):
  """uncertainty-baselines' `apply_dropout`: always-on dropout (MC dropout), of whole
  channels (`noise_shape [B, 1, 1, C]`) when `filterwise`; the identity for rate 0.
  """
  if not rate:
    return x
  from keras_unc.layers.mc_dropout import MCDropout  # Only MC dropout needs it.

  noise_shape = (None, 1, 1, None) if filterwise else None
  return MCDropout(rate, noise_shape=noise_shape, name=name)(x)


def _residual_block(
  x,
  filters,
  strides,
  *,
  bottleneck,
  width,
  block,
  conv_factory,
  batchnorm_factory,
  zero_init_residual,
  bn_momentum,
  bn_epsilon,
  dropout_rate,
  filterwise_dropout,
):
  """A basic or bottleneck (v1.5) residual block; with `dropout_rate`, MC dropout after
  every ReLU inside the block and after the projection shortcut (ub `resnet50_dropout`).
  """
  expansion = _BOTTLENECK_EXPANSION if bottleneck else 1
  mid_channels = _channels(filters, width)
  out_channels = _channels(expansion * filters, width)
  common = dict(
    block=block,
    conv_factory=conv_factory,
    batchnorm_factory=batchnorm_factory,
    bn_momentum=bn_momentum,
    bn_epsilon=bn_epsilon,
  )

  def drop(y, suffix):
    return _dropout(y, dropout_rate, filterwise_dropout, f"{block}_{suffix}")

  def conv_bn(y, channels, kernel_size, stride, index, zero_gamma=False):
    return _conv_bn(
      y,
      channels,
      kernel_size,
      stride,
      conv_name=f"{block}_conv{index}",
      bn_name=f"{block}_bn{index}",
      zero_gamma=zero_gamma,
      **common,
    )

  shortcut = x
  # A factory that widens every layer (Packed-Ensembles' alpha) says so in `width_factor`.
  if strides != 1 or x.shape[-1] != out_channels * getattr(conv_factory, "width_factor", 1):
    shortcut = _conv_bn(
      x,
      out_channels,
      1,
      strides,
      conv_name=f"{block}_shortcut_conv",
      bn_name=f"{block}_shortcut_bn",
      **common,
    )
    shortcut = drop(shortcut, "shortcut_dropout")

  if bottleneck:
    y = conv_bn(x, mid_channels, 1, 1, 1)
    y = drop(keras.layers.Activation("relu", name=f"{block}_relu1")(y), "dropout1")
    # v1.5: the stride is in the 3x3 conv.
    y = conv_bn(y, mid_channels, 3, strides, 2)
    y = drop(keras.layers.Activation("relu", name=f"{block}_relu2")(y), "dropout2")
    # Zero-initialised last BN gamma makes the block start as identity
    # (Goyal et al., 2017, https://arxiv.org/abs/1706.02677).
    y = conv_bn(y, out_channels, 1, 1, 3, zero_gamma=zero_init_residual)
  else:
    y = conv_bn(x, mid_channels, 3, strides, 1)
    y = drop(keras.layers.Activation("relu", name=f"{block}_relu1")(y), "dropout1")
    y = conv_bn(y, out_channels, 3, 1, 2, zero_gamma=zero_init_residual)

  y = keras.layers.Add(name=f"{block}_add")([shortcut, y])
  return keras.layers.Activation("relu", name=f"{block}_out")(y)


def _channels(channels, width):
  return max(1, int(round(channels * width)))


@gin.configurable
def resnet(
  depth=50,
  *,
  width=1.0,
  image_size=224,
  num_channels=3,
  stem="imagenet",
  conv_factory=default_conv,
  dense_factory=None,
  batchnorm_factory=default_batchnorm,
  zero_init_residual=True,
  bn_momentum=0.9,
  bn_epsilon=1e-5,
  dropout_rate=0.0,
  filterwise_dropout=False,
  tile_members=1,
  tile_train_members=None,
  tile_before_block=None,
  name="resnet",
):
  """Builds a ResNet v1.5 backbone as a functional `keras.Model`.

  Stem, four stages of residual blocks (64, 128, 256, 512 base channels,
  strides 1, 2, 2, 2; projection shortcut = 1x1 conv + BN whenever the
  shape changes), then global average pooling. Convolutions have no bias
  and a He-normal (fan_out) initialisation like torchvision. Reference: He
  et al., "Deep Residual Learning for Image Recognition",
  https://arxiv.org/abs/1512.03385.

  Args:
      depth: int. One of 18, 34 (basic blocks), 50, 101, 152 (bottleneck
          blocks).
      width: float. Multiplier of every channel count, stem included
          (`channels = max(1, round(c * width))`): 2 gives ResNet-50w2, 4
          ResNet-50w4; fractions give tiny test models.
      image_size: int, (int, int) or None. Input height and width; None
          for any size.
      num_channels: int. Input channels.
      stem: `"imagenet"` (7x7/2 conv, BN, ReLU, 3x3/2 max pool) or
          `"cifar"` (3x3/1 conv, BN, ReLU, no pooling; for 28-32 px
          inputs).
      conv_factory: callable building every Conv2D, see
          `keras_unc.backbones.factories`.
      dense_factory: accepted so every method's overrides fit every
          backbone; unused (a ResNet has no hidden Dense layer).
      batchnorm_factory: callable building every BatchNorm, see
          `keras_unc.backbones.factories.default_batchnorm` (same `block`
          as the conv before it).
      zero_init_residual: bool. Initialise the last BN gamma of every
          residual branch to zero.
      bn_momentum: float. Keras BN momentum (0.9 = torch momentum 0.1).
      bn_epsilon: float. BN epsilon.
      dropout_rate: float in [0, 1). MC dropout, kept on at inference
          (`keras_unc.layers.mc_dropout.MCDropout`), as uncertainty-baselines'
          `resnet50_dropout`: after the stem ReLU, after every ReLU inside a
          residual block and after each projection shortcut's BN (not after
          the block's last BN or its output ReLU). 0 (default) adds no layer.
          BatchNorm is unaffected (moving statistics at inference). For S
          Monte Carlo samples tile the batch (`tile_members=S`,
          `tile_train_members=1`), as the `mc_dropout` method does.
      filterwise_dropout: bool. Drop whole channels (one draw per example and
          channel, `noise_shape [B, 1, 1, C]`, ub's `filterwise_dropout`)
          instead of single activations.
      tile_members: int. Ensemble size M of BatchEnsemble layers: the batch
          is tiled M times once (`TileMembers`), so the output is
          `[M * B, C]` with member i in rows `[i*B, (i+1)*B)`.
      tile_train_members: int or None. M in training calls (None: the
          same); MC dropout trains on one sample (1).
      tile_before_block: None tiles the input images; a block name
          `"stage{s}_block{b}"` tiles the activations entering that block.
      name: str. Name of the returned model.

  Returns:
      A `keras.Model` mapping `[B, H, W, num_channels]` float images
      (channels_last) to `[B, C]` embeddings, `C = round(2048 * width)` for
      bottleneck and `round(512 * width)` for basic-block networks.

  Example:
  ```python
  backbone = resnet(18, width=0.25, image_size=32, stem="cifar")
  logits = keras.layers.Dense(10)(backbone.output)
  classifier = keras.Model(backbone.input, logits)
  ```
  """
  if depth not in RESNET_DEPTHS:
    raise ValueError(f"Unknown ResNet depth {depth!r}; valid depths are {sorted(RESNET_DEPTHS)}.")
  if stem not in ("imagenet", "cifar"):
    raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}.")
  if width <= 0:
    raise ValueError(f"width must be positive, got {width}.")
  _check_dropout(dropout_rate)
  block_type, blocks_per_stage = RESNET_DEPTHS[depth]
  if image_size is None or isinstance(image_size, int):
    image_size = (image_size, image_size)
  bn_args = dict(
    bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, batchnorm_factory=batchnorm_factory
  )
  tile = dict(members=tile_members, train_members=tile_train_members)

  names = [f"stage{s}_block{b + 1}" for s, n in enumerate(blocks_per_stage, 1) for b in range(n)]
  if tile_before_block is not None and tile_before_block not in names:
    raise ValueError(
      f"tile_before_block={tile_before_block!r} is not a block of "
      f"ResNet-{depth}: use one of {names}, or None to tile the input."
    )
  inputs = keras.Input((*image_size, num_channels), name="images")
  x = inputs
  if tile_members > 1 and tile_before_block is None:
    x = _tile(**tile)(x)
  stem_channels = _channels(64, width)
  # ImageNet stem: 7x7/2 conv + 3x3/2 max pool; "cifar" stem: one 3x3/1 conv.
  kernel, stride = (7, 2) if stem == "imagenet" else (3, 1)
  x = _conv_bn(
    x,
    stem_channels,
    kernel,
    stride,
    conv_name="stem_conv",
    bn_name="stem_bn",
    block=None,
    conv_factory=conv_factory,
    **bn_args,
  )
  x = keras.layers.Activation("relu", name="stem_relu")(x)
  x = _dropout(x, dropout_rate, filterwise_dropout, "stem_dropout")
  if stem == "imagenet":
    # torch pads the max pool with -inf; after a ReLU zeros are
    # equivalent and ZeroPadding2D keeps this backend-agnostic.
    x = keras.layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)

  for stage, (filters, stride, blocks) in enumerate(
    zip(_STAGE_FILTERS, _STAGE_STRIDES, blocks_per_stage), start=1
  ):
    for index in range(blocks):
      if tile_members > 1 and tile_before_block == f"stage{stage}_block{index + 1}":
        x = _tile(**tile)(x)
      x = _residual_block(
        x,
        filters,
        stride if index == 0 else 1,
        bottleneck=block_type == "bottleneck",
        width=width,
        block=f"stage{stage}_block{index + 1}",
        conv_factory=conv_factory,
        zero_init_residual=zero_init_residual,
        dropout_rate=dropout_rate,
        filterwise_dropout=filterwise_dropout,
        **bn_args,
      )
  x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
  return keras.Model(inputs, x, name=name)


def _check_dropout(rate):
  if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
    raise ValueError(
      f"dropout_rate must be a float in [0, 1), got {rate!r}: e.g. 0.05 "
      "(uncertainty-baselines' ImageNet MC dropout), or 0 for no dropout."
    )


def _tile(members, train_members=None):
  # Imported here: only ensemble and MC dropout methods need it.
  from keras_unc.layers.batch_ensemble import TileMembers

  return TileMembers(members, train_members=train_members, name="tile_members")
