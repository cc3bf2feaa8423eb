"""Wide ResNet (WRN-n-k) backbone.

A functional Keras implementation of the Wide Residual Networks of
[Wide Residual Networks](https://arxiv.org/abs/1605.07146) (Zagoruyko & Komodakis, BMVC 2016)
as built by uncertainty-baselines (`uncertainty_baselines/models/wide_resnet.py`,
`version=2`, the CIFAR baselines' WRN-28-10): a 3x3 stem conv with 16 channels, three groups
of `(depth - 4) / 6` pre-activation basic blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3) with
`16k`, `32k`, `64k` channels and strides 1, 2, 2, a 1x1 projection shortcut whenever the shape
changes, then BN, ReLU and global average pooling. Convolutions have no bias and a He-normal
initialisation; BatchNorm uses epsilon 1e-5 and momentum 0.9 (Torch's defaults, as ub). L2
regularisation is the trainer's weight decay, not part of the backbone.

Two details follow ub rather than the original Torch code: every conv uses Keras
`padding="same"` (at stride 2 it pads (0, 1), not (1, 1)), and the projection shortcut is
applied to the block input itself, not to its pre-activation.

Every `Conv2D` is created by `conv_factory` (see `keras_unc.backbones.factories`):

* stem: `"stem_conv"`, `block=None`;
* block `b` of group `s` (both 1-based; named "stage" as in `resnet` so block names, Ensemble
  blocks and `frozen_prefix(backbone="resnet", stages=K)` work alike):
  `block="stage{s}_block{b}"`, names `"stage{s}_block{b}_conv1"`, `..._conv2` and
  `"stage{s}_block{b}_shortcut_conv"` for the projection shortcut.

Example:
```python
from keras_unc.backbones import wide_resnet

backbone = wide_resnet(28, 10)  # WRN-28-10, [B, 32, 32, 3] -> [B, 640]
tiny = wide_resnet(10, 1, image_size=16)  # [B, 64]
```
"""

import gin
import keras

from keras_unc.backbones.factories import default_batchnorm, default_conv
from keras_unc.backbones.resnet import _check_dropout, _dropout, _tile

_GROUP_FILTERS = (16, 32, 64)
_GROUP_STRIDES = (1, 2, 2)


def _conv(x, filters, kernel_size, strides, *, name, block, conv_factory):
  return conv_factory(
    filters,
    kernel_size,
    name=name,
    block=block,
    strides=strides,
    padding="same",
    use_bias=False,
    kernel_initializer="he_normal",
  )(x)


def _bn_relu(x, name, bn_momentum, bn_epsilon, relu_name, batchnorm_factory, block):
  x = batchnorm_factory(name=name, block=block, momentum=bn_momentum, epsilon=bn_epsilon)(x)
  return keras.layers.Activation("relu", name=relu_name)(x)


def _basic_block(x, filters, strides, *, block, conv_factory, bn, dropout):
  """Pre-activation basic block (ub `basic_block`, `version=2`; with dropout ub
  `wide_resnet_dropout.basic_block`).
  """
  conv = dict(block=block, conv_factory=conv_factory)
  rate, filterwise, residual = dropout
  everywhere = rate and not residual

  def drop(y, suffix, on):
    return _dropout(y, rate if on else 0.0, filterwise, f"{block}_{suffix}")

  y = _bn_relu(x, f"{block}_bn1", relu_name=f"{block}_relu1", block=block, **bn)
  y = drop(y, "dropout1", everywhere)
  y = _conv(y, filters, 3, strides, name=f"{block}_conv1", **conv)
  y = drop(y, "residual_dropout", residual)
  y = _bn_relu(y, f"{block}_bn2", relu_name=f"{block}_relu2", block=block, **bn)
  y = drop(y, "dropout2", everywhere)
  y = _conv(y, filters, 3, 1, name=f"{block}_conv2", **conv)
  y = drop(y, "dropout3", everywhere)
  shortcut = x
  if strides != 1 or x.shape[-1] != filters * getattr(conv_factory, "width_factor", 1):
    # ub projects the block input itself (not its pre-activation).
    shortcut = _conv(x, filters, 1, strides, name=f"{block}_shortcut_conv", **conv)
    shortcut = drop(shortcut, "shortcut_dropout", everywhere)
  return keras.layers.Add(name=f"{block}_add")([shortcut, y])


@gin.configurable
def wide_resnet(
  depth=28,
  width_multiplier=10,
  *,
  image_size=32,
  num_channels=3,
  conv_factory=default_conv,
  dense_factory=None,
  batchnorm_factory=default_batchnorm,
  bn_momentum=0.9,
  bn_epsilon=1e-5,
  dropout_rate=0.0,
  filterwise_dropout=False,
  residual_dropout=False,
  tile_members=1,
  tile_train_members=None,
  tile_before_block=None,
  name="wide_resnet",
):
  """Builds a Wide ResNet WRN-`depth`-`width_multiplier` backbone as a functional `keras.Model`.

  Reference: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016,
  https://arxiv.org/abs/1605.07146; uncertainty-baselines' `models/wide_resnet.py`.

  Args:
      depth: int. Total number of conv layers `n` in WRN-n-k, `6 * N + 4` (10, 16, 22, 28,
          40, ...) with `N` blocks per group.
      width_multiplier: int. `k` in WRN-n-k: the groups have `16k`, `32k`, `64k` channels.
      image_size: int, (int, int) or None. Input height and width (32 for CIFAR); None for
          any size.
      num_channels: int. Input channels.
      conv_factory: callable building every Conv2D, see `keras_unc.backbones.factories`.
      dense_factory: accepted so every method's overrides fit every backbone; unused (a Wide
          ResNet has no hidden Dense layer).
      batchnorm_factory: callable building every BatchNorm, see
          `keras_unc.backbones.factories.default_batchnorm` (`block` of its residual block;
          None for the final BatchNorm).
      bn_momentum: float. Keras BN momentum (0.9 = Torch momentum 0.1, as ub).
      bn_epsilon: float. BN epsilon (1e-5, as ub).
      dropout_rate: float in [0, 1). MC dropout kept on at inference, as ub's
          `wide_resnet_dropout`: after the stem conv, after both BN-ReLUs and the second conv
          of every block and after each projection shortcut. 0 adds no layer.
      filterwise_dropout: bool. Drop whole channels (`noise_shape [B, 1, 1, C]`).
      residual_dropout: bool. ub's `residual_dropout`: dropout only after the first conv of
          each block's residual branch (and nowhere else).
      tile_members: int. Ensemble size M of BatchEnsemble layers: the batch is tiled M times
          once (`TileMembers`), so the output is `[M * B, 64k]` with member i in rows
          `[i*B, (i+1)*B)`.
      tile_train_members: int or None. M in training calls (None: the same); MC dropout
          trains on one sample (1).
      tile_before_block: None tiles the input images; a block name `"stage{s}_block{b}"`
          tiles the activations entering that block.
      name: str. Name of the returned model.

  Returns:
      A `keras.Model` mapping `[B, H, W, num_channels]` float images (channels_last) to
      `[B, 64 * width_multiplier]` embeddings.

  Example:
  ```python
  backbone = wide_resnet(28, 10, image_size=32)
  logits = keras.layers.Dense(10, kernel_initializer="he_normal")(backbone.output)
  classifier = keras.Model(backbone.input, logits)  # 36,479,194 trainable parameters
  ```
  """
  if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
    raise ValueError(
      f"Wide ResNet depth must be 6 * N + 4 with N >= 1 blocks per group (10, 16, 22, 28, "
      f"40, ...), got depth={depth!r}."
    )
  if not isinstance(width_multiplier, int) or width_multiplier < 1:
    raise ValueError(f"width_multiplier must be an int >= 1, got {width_multiplier!r}.")
  blocks = (depth - 4) // 6
  if image_size is None or isinstance(image_size, int):
    image_size = (image_size, image_size)
  names = [f"stage{s}_block{b}" for s in range(1, 4) for b in range(1, blocks + 1)]
  if tile_before_block is not None and tile_before_block not in names:
    raise ValueError(
      f"tile_before_block={tile_before_block!r} is not a block of WRN-{depth}-"
      f"{width_multiplier}: use one of {names}, or None to tile the input."
    )
  _check_dropout(dropout_rate)
  bn = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, batchnorm_factory=batchnorm_factory)
  dropout = (dropout_rate, filterwise_dropout, residual_dropout)
  tile = dict(members=tile_members, train_members=tile_train_members)

  inputs = keras.Input((*image_size, num_channels), name="images")
  x = inputs
  if tile_members > 1 and tile_before_block is None:
    x = _tile(**tile)(x)
  x = _conv(x, 16, 3, 1, name="stem_conv", block=None, conv_factory=conv_factory)
  x = _dropout(x, 0.0 if residual_dropout else dropout_rate, filterwise_dropout, "stem_dropout")
  for stage, (filters, stride) in enumerate(zip(_GROUP_FILTERS, _GROUP_STRIDES), start=1):
    for index in range(1, blocks + 1):
      block = f"stage{stage}_block{index}"
      if tile_members > 1 and tile_before_block == block:
        x = _tile(**tile)(x)
      x = _basic_block(
        x,
        filters * width_multiplier,
        stride if index == 1 else 1,
        block=block,
        conv_factory=conv_factory,
        bn=bn,
        dropout=dropout,
      )
  x = _bn_relu(x, "final_bn", relu_name="final_relu", block=None, **bn)
  # ub: AveragePooling2D(8) + Flatten, the same on its 8x8 final map at 32 px.
  x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
  return keras.Model(inputs, x, name=name)
