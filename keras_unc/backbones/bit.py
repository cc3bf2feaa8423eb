"""BiT ResNet-v2 backbone (Big Transfer).

A functional Keras implementation of the ResNet-v2 of
[Big Transfer (BiT): General Visual Representation Learning](https://arxiv.org/abs/1912.11370)
(Kolesnikov et al., ECCV 2020), following big_vision's `big_vision/models/bit_paper.py`
(the BiT paper models; big_vision's `bit.py` is a post-activation ResNet-v1 with GroupNorm)
and the authors' `big_transfer` code: pre-activation bottleneck units
(GN-ReLU-conv1x1-GN-ReLU-conv3x3-GN-ReLU-conv1x1, stride in the 3x3 conv), weight-standardised
convolutions without bias (`keras_unc.layers.std_conv.StdConv2D`), GroupNorm with 32 groups
and epsilon 1e-5 instead of BatchNorm, and a projection shortcut (a strided 1x1 conv, no norm)
taken from the pre-activated input whenever the shape changes.

Every convolution is created by `conv_factory` (see `keras_unc.backbones.factories`) and then
weight-standardised with `keras_unc.layers.std_conv.weight_standardized`: the factories of the
methods start from `default_conv` and return `Conv2D`, `Conv2DBatchEnsemble` or a
`SpectralNormalization` wrapper around one of them, and this backbone turns each into its
standardised counterpart (`StdConv2D`, `StdConv2DBatchEnsemble`, the wrapper around the
standardised layer). A conv factory therefore needs no BiT-specific argument, and a modifier
acts on the kernel the network really applies (spectral normalisation bounds σ of the
standardised kernel). Names and blocks:

* stem: `"stem_conv"` (big_vision `root_block/conv_root`), `block=None`;
* bottleneck unit `b` of stage `s` (both 1-based; big_vision `block{s}/unit{b:02d}`):
  `block="stage{s}_block{b}"`, convs `"stage{s}_block{b}_conv1"`, `..._conv2`, `..._conv3`,
  the projection `"stage{s}_block{b}_shortcut_conv"` (`conv_proj`), GroupNorms `..._gn1`,
  `..._gn2`, `..._gn3`; the final GroupNorm is `"final_gn"` (`norm-pre-head`).

Example:
```python
from keras_unc.backbones import bit_resnet

backbone = bit_resnet(50)  # BiT-M R50x1: [B, 224, 224, 3] -> [B, 2048]
r101x3 = bit_resnet(101, width=3)  # [B, 6144]
tiny = bit_resnet((1, 1, 1, 1), width=0.125, groups=8, image_size=32)
```
"""

import gin
import keras

from keras_unc.backbones.factories import default_conv
from keras_unc.layers.std_conv import weight_standardized

# depth -> bottleneck units per stage (big_vision `bit.get_block_desc`).
BIT_DEPTHS = {
  26: (2, 2, 2, 2),
  50: (3, 4, 6, 3),
  101: (3, 4, 23, 3),
  152: (3, 8, 36, 3),
  200: (3, 24, 36, 3),
}
_EXPANSION = 4


def _conv(x, filters, kernel_size, strides, *, name, block, conv_factory):
  """A bias-free weight-standardised conv with BiT's symmetric padding."""
  if strides > 1 and kernel_size > 1:
    # Explicit symmetric padding (big_vision: padding=[(p, p), (p, p)]); Keras "same" would
    # pad (p - 1, p) at stride 2.
    x = keras.layers.ZeroPadding2D((kernel_size - 1) // 2, name=f"{name}_pad")(x)
    padding = "valid"
  else:
    padding = "same"
  layer = conv_factory(
    filters,
    kernel_size,
    name=name,
    block=block,
    strides=strides,
    padding=padding,
    use_bias=False,
    # flax's nn.Conv default; the scale is irrelevant after standardisation.
    kernel_initializer="lecun_normal",
  )
  return weight_standardized(layer)(x)


def _group_norm(x, name, groups, epsilon):
  return keras.layers.GroupNormalization(groups=groups, epsilon=epsilon, name=name)(x)


def _unit(x, mid_channels, strides, *, block, conv_factory, groups, gn_epsilon):
  """A pre-activation bottleneck unit (big_vision `bit_paper.ResidualUnit`)."""
  out_channels = _EXPANSION * mid_channels

  def conv(y, channels, kernel_size, stride, suffix):
    return _conv(
      y,
      channels,
      kernel_size,
      stride,
      name=f"{block}_{suffix}",
      block=block,
      conv_factory=conv_factory,
    )

  residual = x
  x = _group_norm(x, f"{block}_gn1", groups, gn_epsilon)
  x = keras.layers.Activation("relu", name=f"{block}_relu1")(x)
  if residual.shape[-1] != out_channels or strides != 1:
    # The projection sees the pre-activated input (ResNet-v2).
    residual = conv(x, out_channels, 1, strides, "shortcut_conv")
  x = conv(x, mid_channels, 1, 1, "conv1")
  x = _group_norm(x, f"{block}_gn2", groups, gn_epsilon)
  x = keras.layers.Activation("relu", name=f"{block}_relu2")(x)
  x = conv(x, mid_channels, 3, strides, "conv2")  # The stride sits in the 3x3 conv.
  x = _group_norm(x, f"{block}_gn3", groups, gn_epsilon)
  x = keras.layers.Activation("relu", name=f"{block}_relu3")(x)
  x = conv(x, out_channels, 1, 1, "conv3")
  return keras.layers.Add(name=f"{block}_add")([residual, x])


def _blocks_per_stage(depth):
  if isinstance(depth, int) and depth in BIT_DEPTHS:
    return BIT_DEPTHS[depth]
  if (
    not isinstance(depth, int)
    and len(tuple(depth)) == 4
    and all(isinstance(n, int) and n >= 1 for n in depth)
  ):
    return tuple(depth)
  raise ValueError(
    f"Unknown BiT ResNet depth {depth!r}: use one of {sorted(BIT_DEPTHS)} or four "
    "units per stage, e.g. (3, 4, 6, 3)."
  )


@gin.configurable
def bit_resnet(
  depth=50,
  width=1,
  *,
  image_size=224,
  num_channels=3,
  groups=32,
  gn_epsilon=1e-5,
  conv_factory=default_conv,
  dense_factory=None,
  tile_members=1,
  tile_before_block=None,
  name="bit_resnet",
):
  """Builds a BiT ResNet-v2 backbone (e.g. BiT-M R50x1) as a functional `keras.Model`.

  Stem: 7x7/2 weight-standardised conv (64 * width filters, padding 3), zero padding 1 and a
  3x3/2 max pool (no norm or activation in the stem). Four stages of pre-activation bottleneck
  units with 64, 128, 256, 512 (times `width`) middle and four times as many output channels,
  strides 1, 2, 2, 2 in the first unit's 3x3 conv. Then GroupNorm, ReLU and global average
  pooling. Reference: Kolesnikov et al., "Big Transfer (BiT): General Visual Representation
  Learning", https://arxiv.org/abs/1912.11370; He et al., "Identity Mappings in Deep Residual
  Networks", https://arxiv.org/abs/1603.05027.

  Args:
      depth: int, one of 26, 50, 101, 152, 200, or four ints: units per stage (tiny models,
          e.g. `(1, 1, 1, 1)`), as big_vision's `depth`.
      width: width multiplier: the stem has `int(64 * width)` channels (BiT's R50x3 is
          `width=3`); fractions give tiny test models.
      image_size: int, (int, int) or None. Input height and width; None for any size.
      num_channels: int. Input channels.
      groups: GroupNorm groups (32 in BiT); must divide every channel count.
      gn_epsilon: GroupNorm epsilon (1e-5 in big_vision's `bit_paper.GroupNorm`).
      conv_factory: callable building every Conv2D, see `keras_unc.backbones.factories`; its
          layers are weight-standardised (module docstring).
      dense_factory: accepted so every method's overrides fit every backbone; unused.
      tile_members: int. Ensemble size M of BatchEnsemble layers: the batch is tiled M times
          once (`TileMembers`), so the output is `[M * B, C]` with member i in rows
          `[i*B, (i+1)*B)`.
      tile_before_block: None tiles the input images; a block name `"stage{s}_block{b}"` tiles
          the activations entering that unit.
      name: str. Name of the returned model.

  Returns:
      A `keras.Model` mapping `[B, H, W, num_channels]` float images (channels_last) to
      `[B, 2048 * width]` embeddings (`32 * int(64 * width)`).

  Example:
  ```python
  backbone = bit_resnet(50, image_size=224)
  logits = keras.layers.Dense(1000, kernel_initializer="zeros")(backbone.output)
  classifier = keras.Model(backbone.input, logits)
  ```
  """
  blocks_per_stage = _blocks_per_stage(depth)
  stem_channels = int(64 * width)
  if stem_channels < 1:
    raise ValueError(f"width must give at least one stem channel, got width={width}.")
  if stem_channels % groups:
    raise ValueError(
      f"groups={groups} must divide every channel count; the stem of width={width} has "
      f"{stem_channels} channels: use a width with int(64 * width) divisible by {groups}, "
      "or fewer groups."
    )
  if image_size is None or isinstance(image_size, int):
    image_size = (image_size, image_size)
  names = [f"stage{s}_block{b + 1}" for s, n in enumerate(blocks_per_stage, 1) for b in range(n)]
  if tile_before_block is not None and tile_before_block not in names:
    raise ValueError(
      f"tile_before_block={tile_before_block!r} is not a block of this BiT ResNet: use one "
      f"of {names}, or None to tile the input."
    )

  inputs = keras.Input((*image_size, num_channels), name="images")
  x = inputs
  if tile_members > 1 and tile_before_block is None:
    x = _tile(tile_members)(x)
  x = _conv(x, stem_channels, 7, 2, name="stem_conv", block=None, conv_factory=conv_factory)
  # The authors' code (big_transfer bit_jax / bit_tf2 / bit_pytorch, timm) zero-pads, then
  # pools; big_vision's bit_paper.py pads the pool with -inf, which differs only in border
  # windows whose values are all negative (there is no ReLU before this pool).
  x = keras.layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
  x = keras.layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)

  for stage, blocks in enumerate(blocks_per_stage, start=1):
    mid_channels = stem_channels * 2 ** (stage - 1)
    for index in range(blocks):
      block = f"stage{stage}_block{index + 1}"
      if tile_members > 1 and tile_before_block == block:
        x = _tile(tile_members)(x)
      x = _unit(
        x,
        mid_channels,
        2 if stage > 1 and index == 0 else 1,
        block=block,
        conv_factory=conv_factory,
        groups=groups,
        gn_epsilon=gn_epsilon,
      )
  x = _group_norm(x, "final_gn", groups, gn_epsilon)
  x = keras.layers.Activation("relu", name="final_relu")(x)
  x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
  return keras.Model(inputs, x, name=name)


def _tile(members):
  # Imported here: only ensemble methods need it.
  from keras_unc.layers.batch_ensemble import TileMembers

  return TileMembers(members, name="tile_members")
