"""Vision Transformer (ViT) backbone.

A functional Keras implementation of the ViT encoder of
[An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale](
https://arxiv.org/abs/2010.11929) (Dosovitskiy et al., ICLR 2021), following
the [big_vision](https://github.com/google-research/big_vision) reference
(`big_vision/models/vit.py`) for the architecture and the variant sizes.

The model maps already-normalised float images `[B, H, W, C]` to the pre-head
representation `[B, width]`; classification heads are added by the caller.

All weight-bearing linear layers are created through factories (see
`keras_unc.backbones.factories`) so that uncertainty methods can swap them:

* `conv_factory` builds the patch embedding, name `"patch_embedding"`,
  `block=None`.
* `dense_factory` builds, in encoder block `i` (`block=i`, 0-based):
  `"block{i}_attn_query"`, `"block{i}_attn_key"`, `"block{i}_attn_value"`,
  `"block{i}_attn_out"` (the four attention projections, each a
  `width -> width` Dense on `[B, T, width]`) and `"block{i}_mlp_dense_1"`
  (`width -> mlp_dim`), `"block{i}_mlp_dense_2"` (`mlp_dim -> width`).
* with `rep_size`, `dense_factory` builds the pre-logits layer `"pre_logits"`
  (`block="pre_logits"`).
* with `pooling="map"`, `dense_factory` also builds the multi-head attention pooling head
  (`block="map_head"`): `"map_head_attn_query"`, `"map_head_attn_key"`,
  `"map_head_attn_value"`, `"map_head_attn_out"`, `"map_head_mlp_dense_1"`,
  `"map_head_mlp_dense_2"`.

The attention itself (head split, scaled dot product, softmax) lives in the
weightless `ScaledDotProductAttention` layer, which is why the projections can
come from the factory instead of being hidden inside
`keras.layers.MultiHeadAttention`. With the default factories the model is
numerically the same as `keras_hub.models.ViTBackbone` (whose
`MultiHeadAttention` kernels are the same matrices, reshaped to
`[width, heads, head_dim]`).

Example:
```python
from keras_unc.backbones import vit

backbone = vit("S/16", image_size=224)  # ViT-S/16, [B, 224, 224, 3] -> [B, 384]
tiny = vit("Ti/4", image_size=28, width=64, depth=2, mlp_dim=128, num_heads=2)
```
"""

import math

import gin
import keras
import numpy as np
from keras import ops

from keras_unc.backbones.factories import default_conv, default_dense

# Width, depth, MLP dim and heads of the named ViT sizes (big_vision
# `decode_variant`); the patch size is the part after "/" in the variant.
VIT_VARIANTS = {
  "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
  "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
  "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
  "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
  "H": dict(width=1280, depth=32, mlp_dim=5120, num_heads=16),
}

# LayerNorm epsilon of the original ViT / big_vision (flax default).
LAYER_NORM_EPSILON = 1e-6


def posemb_sincos_2d(height, width, dim, temperature=10_000.0):
  """Fixed 2D sine-cosine position embedding table (big_vision).

  For a `height x width` grid of patches in row-major order, the first
  quarter of the `dim` features is `sin(x * omega)`, then `cos(x * omega)`,
  `sin(y * omega)`, `cos(y * omega)`, with
  `omega_j = temperature ** -(j / (dim / 4 - 1))`. Same as
  `big_vision.models.vit.posemb_sincos_2d`.

  Args:
      height: int. Number of patch rows.
      width: int. Number of patch columns.
      dim: int. Embedding dimension, a multiple of 4.
      temperature: float. Base of the frequency progression.

  Returns:
      A float32 NumPy array of shape `[1, height * width, dim]`.
  """
  if dim % 4 != 0:
    raise ValueError(
      f"The sincos2d position embedding needs a width that is a multiple of 4, got width={dim}."
    )
  y, x = np.mgrid[:height, :width]
  quarter = dim // 4
  # max(1, ...) only guards dim == 4, where big_vision would divide by 0.
  omega = np.arange(quarter) / max(1, quarter - 1)
  omega = 1.0 / (temperature**omega)
  y = np.einsum("m,d->md", y.reshape(-1), omega)
  x = np.einsum("m,d->md", x.reshape(-1), omega)
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return pe[None].astype("float32")


@keras.saving.register_keras_serializable(package="keras_unc")
class ClassToken(keras.layers.Layer):
  """Prepends a learned class token to a token sequence.

  `[B, T, D] -> [B, T + 1, D]`. Initialised to zeros as in the original ViT
  and big_vision.

  Args:
      initializer: initializer of the `[1, 1, D]` token.
      **kwargs: base `keras.layers.Layer` arguments.
  """

  def __init__(self, initializer="zeros", **kwargs):
    super().__init__(**kwargs)
    self.initializer = keras.initializers.get(initializer)

  def build(self, input_shape):
    self.token = self.add_weight(
      shape=(1, 1, input_shape[-1]),
      initializer=self.initializer,
      name="token",
    )

  def call(self, inputs):
    token = ops.cast(self.token, inputs.dtype)
    token = ops.tile(token, (ops.shape(inputs)[0], 1, 1))
    return ops.concatenate([token, inputs], axis=1)

  def compute_output_shape(self, input_shape):
    tokens = None if input_shape[1] is None else input_shape[1] + 1
    return (input_shape[0], tokens, input_shape[2])

  def get_config(self):
    config = super().get_config()
    config["initializer"] = keras.initializers.serialize(self.initializer)
    return config


@keras.saving.register_keras_serializable(package="keras_unc")
class LearnedPositionEmbedding(keras.layers.Layer):
  """Adds a trainable position embedding of shape `[1, T, D]`.

  `T` is the full sequence length seen at build time, so when applied after
  `ClassToken` it covers the class token too (as in the original ViT and
  keras-hub).

  Args:
      initializer: initializer of the table; normal with stddev 0.02 by
          default.
      **kwargs: base `keras.layers.Layer` arguments.
  """

  def __init__(self, initializer=None, **kwargs):
    super().__init__(**kwargs)
    if initializer is None:
      initializer = keras.initializers.RandomNormal(stddev=0.02)
    self.initializer = keras.initializers.get(initializer)

  def build(self, input_shape):
    self.embedding = self.add_weight(
      shape=(1, input_shape[1], input_shape[2]),
      initializer=self.initializer,
      name="embedding",
    )

  def call(self, inputs):
    return inputs + ops.cast(self.embedding, inputs.dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config["initializer"] = keras.initializers.serialize(self.initializer)
    return config


@keras.saving.register_keras_serializable(package="keras_unc")
class SinCos2DPositionEmbedding(keras.layers.Layer):
  """Adds the fixed 2D sine-cosine position embedding of big_vision.

  Applied to the patch tokens only (`[B, gh * gw, D]`, row-major grid); as
  in big_vision a class token, if any, is prepended afterwards and gets no
  position embedding. The table is kept as a non-trainable weight so that
  it is visible in `model.non_trainable_weights` and saved with the model.

  Args:
      grid_size: (int, int). Patch grid `(rows, columns)`.
      temperature: float. Frequency base, 10000 as in big_vision.
      **kwargs: base `keras.layers.Layer` arguments.
  """

  def __init__(self, grid_size, temperature=10_000.0, **kwargs):
    super().__init__(**kwargs)
    self.grid_size = tuple(int(g) for g in grid_size)
    self.temperature = float(temperature)

  def build(self, input_shape):
    rows, cols = self.grid_size
    if input_shape[1] is not None and input_shape[1] != rows * cols:
      raise ValueError(
        f"SinCos2DPositionEmbedding expects {rows}x{cols}="
        f"{rows * cols} tokens, got {input_shape[1]}."
      )
    table = posemb_sincos_2d(rows, cols, input_shape[2], self.temperature)
    self.embedding = self.add_weight(
      shape=table.shape,
      initializer="zeros",
      trainable=False,
      name="embedding",
    )
    self.embedding.assign(table)

  def call(self, inputs):
    return inputs + ops.cast(self.embedding, inputs.dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update({"grid_size": self.grid_size, "temperature": self.temperature})
    return config


@keras.saving.register_keras_serializable(package="keras_unc")
class ScaledDotProductAttention(keras.layers.Layer):
  """Multi-head scaled dot-product attention without projections.

  Takes already-projected `query`, `key`, `value` of shape `[B, T, D]`,
  splits them into `num_heads` heads of size `D / num_heads` (head `h` is
  features `h * head_dim : (h + 1) * head_dim`), computes
  `softmax(q k^T / sqrt(head_dim)) v` per head and merges the heads back to
  `[B, T, D]`. The projections are separate layers so that they can come
  from a dense factory.

  Args:
      num_heads: int. Number of attention heads; must divide `D`.
      dropout: float. Dropout rate on the attention probabilities.
      **kwargs: base `keras.layers.Layer` arguments.
  """

  def __init__(self, num_heads, dropout=0.0, **kwargs):
    super().__init__(**kwargs)
    self.num_heads = int(num_heads)
    self.dropout = float(dropout)
    self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy, name="dropout")

  def _split_heads(self, x):
    shape = ops.shape(x)
    head_dim = x.shape[-1] // self.num_heads
    return ops.reshape(x, (shape[0], shape[1], self.num_heads, head_dim))

  def call(self, query, key, value, training=None):
    dim = query.shape[-1]
    if dim % self.num_heads != 0:
      raise ValueError(f"Feature dim {dim} is not divisible by num_heads={self.num_heads}.")
    q = self._split_heads(query)
    k = self._split_heads(key)
    v = self._split_heads(value)
    q = q * ops.cast(1.0 / math.sqrt(dim // self.num_heads), q.dtype)
    scores = ops.einsum("bqhd,bkhd->bhqk", q, k)
    # Softmax in float32: under mixed precision bf16 logits lose the small
    # differences that decide the attention pattern.
    probs = ops.softmax(ops.cast(scores, "float32"), axis=-1)
    probs = ops.cast(probs, q.dtype)
    probs = self.dropout_layer(probs, training=training)
    out = ops.einsum("bhqk,bkhd->bqhd", probs, v)
    shape = ops.shape(query)
    return ops.reshape(out, (shape[0], shape[1], dim))

  def compute_output_shape(self, query_shape, key_shape=None, value_shape=None):
    return query_shape

  def get_config(self):
    config = super().get_config()
    config.update({"num_heads": self.num_heads, "dropout": self.dropout})
    return config


@keras.saving.register_keras_serializable(package="keras_unc")
class AttentionProbe(ClassToken):
  """A learned query token `[1, 1, D]`, tiled to the batch of its input (big_vision MAPHead).

  `[B, T, D] -> [B, 1, D]`: the input only supplies the batch size and `D`. The same learned
  `[1, 1, D]` weight as `ClassToken`, returned instead of prepended; initialised with
  Xavier-uniform as big_vision's `MAPHead` probe.

  Args:
      initializer: initializer of the `[1, 1, D]` probe.
      **kwargs: base `keras.layers.Layer` arguments.
  """

  def __init__(self, initializer="glorot_uniform", **kwargs):
    super().__init__(initializer, **kwargs)

  def call(self, inputs):
    token = ops.cast(self.token, inputs.dtype)
    return ops.tile(token, (ops.shape(inputs)[0], 1, 1))

  def compute_output_shape(self, input_shape):
    return (input_shape[0], 1, input_shape[-1])


@keras.saving.register_keras_serializable(package="keras_unc")
class TokenPooling(keras.layers.Layer):
  """Pools a token sequence `[B, T, D]` into `[B, D]`.

  Args:
      mode: `"token"` takes token 0 (the class token); `"gap"` averages all
          tokens (global average pooling, big_vision `pool_type="gap"`).
      **kwargs: base `keras.layers.Layer` arguments.
  """

  def __init__(self, mode="token", **kwargs):
    super().__init__(**kwargs)
    if mode not in ("token", "gap"):
      raise ValueError(f"mode must be 'token' or 'gap', got {mode!r}.")
    self.mode = mode

  def call(self, inputs):
    if self.mode == "token":
      return inputs[:, 0]
    return ops.mean(inputs, axis=1)

  def compute_output_shape(self, input_shape):
    return (input_shape[0], input_shape[2])

  def get_config(self):
    config = super().get_config()
    config["mode"] = self.mode
    return config


@keras.saving.register_keras_serializable(package="keras_unc")
class GELU(keras.layers.Layer):
  """GELU activation, exact or tanh-approximated (a settable attribute).

  Exact: `0.5 x (1 + erf(x / sqrt(2)))` (the ViT paper, PyTorch/timm, keras-hub).
  `approximate=True`: `0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`, flax's
  `nn.gelu` default and so what big_vision and vision_transformer checkpoints were trained
  with. The two differ by up to about 5e-4 per unit. The `.npz` / PyTorch importers set
  `approximate` to the source's form, so an imported ViT reproduces its source.

  Args:
      approximate: bool. Use the tanh approximation.
      **kwargs: base `keras.layers.Layer` arguments.

  Example:
  >>> GELU(approximate=True)(np.array([1.0], "float32"))  # 0.8412, exact: 0.8413

  Reference: Hendrycks & Gimpel, "Gaussian Error Linear Units (GELUs)", 2016.
  """

  def __init__(self, approximate=False, **kwargs):
    super().__init__(**kwargs)
    if not isinstance(approximate, bool):
      raise ValueError(
        f"GELU approximate must be True (tanh form, flax / big_vision) or False (exact, "
        f"timm / keras-hub), got {approximate!r}."
      )
    self.approximate = approximate

  def call(self, inputs):
    return keras.activations.gelu(inputs, approximate=self.approximate)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "approximate": self.approximate}


def _pair(value):
  if isinstance(value, int):
    return (value, value)
  value = tuple(int(v) for v in value)
  if len(value) != 2:
    raise ValueError(f"Expected an int or a pair of ints, got {value}.")
  return value


def _parse_variant(variant):
  """Splits "S/16" into ("S", 16); raises a helpful ValueError otherwise."""
  valid = ", ".join(f"'{v}/<patch>'" for v in VIT_VARIANTS)
  parts = variant.split("/") if isinstance(variant, str) else []
  if (
    len(parts) != 2 or parts[0] not in VIT_VARIANTS or not parts[1].isdigit() or int(parts[1]) == 0
  ):
    raise ValueError(
      f"Unknown ViT variant {variant!r}. Valid variants are {valid}, e.g. 'S/16' or 'B/32'."
    )
  return parts[0], int(parts[1])


def _encoder_block(
  x,
  index,
  *,
  width,
  mlp_dim,
  num_heads,
  dropout,
  attention_dropout,
  dense_factory,
  gelu_approximate,
  mc_dropout=0.0,
):
  """One pre-norm Transformer encoder block (big_vision `Encoder1DBlock`); `mc_dropout` > 0
  makes both MLP dropouts always-on MC dropout at that rate.
  """
  prefix = f"block{index}"

  def dense(units, suffix, **kwargs):
    # Xavier-uniform kernels as in big_vision's attention and MLP.
    return dense_factory(
      units,
      name=f"{prefix}_{suffix}",
      block=index,
      kernel_initializer="glorot_uniform",
      **kwargs,
    )

  # Attention branch: LN -> q/k/v projections -> attention -> out projection.
  y = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=f"{prefix}_ln_1")(x)
  q = dense(width, "attn_query")(y)
  k = dense(width, "attn_key")(y)
  v = dense(width, "attn_value")(y)
  y = ScaledDotProductAttention(num_heads, dropout=attention_dropout, name=f"{prefix}_attn")(
    q, k, v
  )
  y = dense(width, "attn_out")(y)
  y = keras.layers.Dropout(dropout, name=f"{prefix}_attn_dropout")(y)
  x = keras.layers.Add(name=f"{prefix}_add_1")([x, y])

  # MLP branch. Tiny normal bias init as in big_vision's MlpBlock.
  y = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=f"{prefix}_ln_2")(x)
  y = _mlp(
    y,
    width,
    mlp_dim,
    dense=dense,
    prefix=prefix,
    dropout=dropout,
    gelu=gelu_approximate,
    mc_dropout=mc_dropout,
  )
  return keras.layers.Add(name=f"{prefix}_add_2")([x, y])


def _mlp(y, width, mlp_dim, *, dense, prefix, dropout, gelu, mc_dropout=0.0):
  """big_vision's MlpBlock: Dense(mlp_dim) -> GELU -> dropout -> Dense(width) -> dropout.

  With `mc_dropout` > 0 both dropouts are `MCDropout` at that rate: on at inference too.
  """

  def drop(y, suffix):
    if mc_dropout:
      from keras_unc.layers.mc_dropout import MCDropout  # Only MC dropout needs it.

      return MCDropout(mc_dropout, name=f"{prefix}_mlp_mc_{suffix}")(y)
    return keras.layers.Dropout(dropout, name=f"{prefix}_mlp_{suffix}")(y)

  y = dense(
    mlp_dim,
    "mlp_dense_1",
    bias_initializer=keras.initializers.RandomNormal(stddev=1e-6),
  )(y)
  # The activation is a separate layer so factories only build linear maps.
  # Exact (erf) GELU by default, as the ViT paper, PyTorch/timm and keras-hub;
  # `gelu=True` is flax's nn.gelu default (tanh approximation), as big_vision.
  y = GELU(gelu, name=f"{prefix}_mlp_gelu")(y)
  y = drop(y, "dropout_1")
  y = dense(
    width,
    "mlp_dense_2",
    bias_initializer=keras.initializers.RandomNormal(stddev=1e-6),
  )(y)
  return drop(y, "dropout_2")


def _map_head(x, *, width, mlp_dim, num_heads, dense_factory, gelu_approximate):
  """Multi-head attention pooling (big_vision `MAPHead`): `[B, T, D] -> [B, 1, D]`.

  A learned probe attends to the tokens (`num_heads` heads, no dropout); then
  `y + MLP(LayerNorm(y))`.
  """
  prefix = "map_head"

  def dense(units, suffix, **kwargs):
    # Xavier-uniform kernels as big_vision's MAPHead attention and MlpBlock.
    return dense_factory(
      units,
      name=f"{prefix}_{suffix}",
      block=prefix,
      kernel_initializer="glorot_uniform",
      **kwargs,
    )

  probe = AttentionProbe(name=f"{prefix}_probe")(x)
  q = dense(width, "attn_query")(probe)
  k = dense(width, "attn_key")(x)
  v = dense(width, "attn_value")(x)
  y = ScaledDotProductAttention(num_heads, name=f"{prefix}_attn")(q, k, v)
  y = dense(width, "attn_out")(y)
  z = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=f"{prefix}_ln")(y)
  z = _mlp(z, width, mlp_dim, dense=dense, prefix=prefix, dropout=0.0, gelu=gelu_approximate)
  return keras.layers.Add(name=f"{prefix}_add")([y, z])


@gin.configurable
def vit(
  variant="S/16",
  *,
  image_size=224,
  num_channels=3,
  pooling="token",
  posemb="learn",
  dropout=0.0,
  attention_dropout=0.0,
  dense_factory=default_dense,
  conv_factory=default_conv,
  width=None,
  depth=None,
  mlp_dim=None,
  num_heads=None,
  patch_size=None,
  rep_size=False,
  gelu_approximate=False,
  tile_members=1,
  tile_train_members=None,
  tile_before_block=None,
  batchnorm_factory=None,
  dropout_rate=0.0,
  filterwise_dropout=False,
  name="vit",
):
  """Builds a Vision Transformer backbone as a functional `keras.Model`.

  Architecture (original ViT / big_vision): a conv patch embedding with
  kernel = stride = patch size, flattened to tokens; a class token
  prepended if `pooling="token"`; a position embedding; dropout; `depth`
  pre-norm encoder blocks (LayerNorm(eps=1e-6) -> multi-head self-attention
  -> dropout -> residual; LayerNorm -> Dense(mlp_dim) -> GELU (exact, or
  tanh with `gelu_approximate`) -> dropout -> Dense(width) -> dropout ->
  residual); a final LayerNorm; then pooling; then, with `rep_size`, a tanh
  pre-logits layer. Reference: Dosovitskiy et al., "An Image is Worth 16x16 Words",
  https://arxiv.org/abs/2010.11929.

  Args:
      variant: str. `"<size>/<patch>"` with size one of `VIT_VARIANTS`
          (`"Ti"`, `"S"`, `"B"`, `"L"`, `"H"`), e.g. `"B/16"`.
      image_size: int or (int, int). Input height and width; each must be
          divisible by the patch size.
      num_channels: int. Input channels.
      pooling: `"token"` returns the class token, `"gap"` the mean of all
          tokens, `"map"` multi-head attention pooling (big_vision
          `pool_type="map"`: a learned probe attends to the tokens with
          `num_heads` heads, then a residual LayerNorm + MLP of `mlp_dim`);
          all after the final LayerNorm; only `"token"` creates a class
          token.
      posemb: `"learn"` for a trainable embedding (normal, stddev 0.02)
          added after the class token is prepended, so it covers it; or
          `"sincos2d"` for the fixed 2D sine-cosine table of big_vision
          added to the patch tokens only (requires `width % 4 == 0`).
      dropout: float. Dropout rate after the position embedding and on
          both residual branches and inside the MLP.
      attention_dropout: float. Dropout rate on attention probabilities.
      dense_factory: callable building every Dense layer, see
          `keras_unc.backbones.factories`; called with `block=i` in block
          `i` and `block="map_head"` in the MAP head.
      conv_factory: callable building the patch embedding conv
          (`block=None`).
      width, depth, mlp_dim, num_heads, patch_size: optional overrides of
          the variant's numbers, for tiny test or demo models.
      rep_size: big_vision's `rep_size`: an int adds a "pre_logits" layer
          `tanh(Dense(rep_size))` after the pooling (so the output is
          `[B, rep_size]`), True the same with `rep_size = width`, False or
          0 (default) none. Built by `dense_factory` (`block="pre_logits"`);
          kernel LeCun-normal and bias zero, flax's `nn.Dense` defaults.
      gelu_approximate: bool. The MLPs' GELU: False (default) exact (erf),
          as the ViT paper, timm and keras-hub; True the tanh approximation,
          flax's `nn.gelu` default used by big_vision (see `GELU`). The
          `.npz` and PyTorch importers set it to their source's form.
      tile_members: int. Ensemble size M of BatchEnsemble layers: the batch
          is tiled M times once (`TileMembers`), so the output is
          `[M * B, width]` with member i in rows `[i*B, (i+1)*B)`.
      tile_train_members: int or None. M in training calls (None: the same).
      tile_before_block: where the tiling happens: None tiles the input
          images, an int `i` the tokens entering encoder block `i` (the
          first block with BatchEnsemble layers; earlier blocks run once).
      batchnorm_factory: accepted so a method's override reaches the ViT
          with a clear error: a ViT has no BatchNorm (per-member BatchNorm
          does not apply); must stay None.
      dropout_rate: float in [0, 1). MC dropout (`MCDropout.placement =
          'backbone'`): both dropouts of every encoder block's MLP become
          always-on `MCDropout` at this rate (the ViT analogue of
          uncertainty-baselines' dropout in every residual block, which has no
          ViT MC-dropout model), replacing `dropout` there.
      filterwise_dropout: must stay False: tokens have no channel maps to
          drop whole (ub's filter-wise dropout is for convolutions).
      name: str. Name of the returned model.

  Returns:
      A `keras.Model` mapping `[B, H, W, num_channels]` float images to
      `[B, width]` embeddings (`[B, rep_size]` with a pre-logits layer).

  Example:
  ```python
  backbone = vit("B/16", image_size=224)
  logits = keras.layers.Dense(1000)(backbone.output)
  classifier = keras.Model(backbone.input, logits)
  ```
  """
  size, variant_patch = _parse_variant(variant)
  spec = dict(VIT_VARIANTS[size])
  overrides = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads)
  spec.update({k: v for k, v in overrides.items() if v is not None})
  width, depth = spec["width"], spec["depth"]
  mlp_dim, num_heads = spec["mlp_dim"], spec["num_heads"]
  if patch_size is None:
    patch_size = variant_patch
  patch_h, patch_w = _pair(patch_size)
  image_h, image_w = _pair(image_size)

  if image_h % patch_h or image_w % patch_w:
    patch = patch_h if patch_h == patch_w else (patch_h, patch_w)
    image = image_h if image_h == image_w else (image_h, image_w)
    fixed_h = math.ceil(image_h / patch_h) * patch_h
    fixed_w = math.ceil(image_w / patch_w) * patch_w
    fixed = fixed_h if fixed_h == fixed_w else (fixed_h, fixed_w)
    multiple = patch_h if patch_h == patch_w else f"{patch_h}x{patch_w}"
    raise ValueError(
      f"image_size {image} is not divisible by patch size {patch} of "
      f"ViT-{size}/{patch}: use a multiple of {multiple} such as "
      f"{fixed}, or a different patch size."
    )
  if width % num_heads:
    raise ValueError(f"width {width} is not divisible by num_heads {num_heads}.")
  if pooling not in ("token", "gap", "map"):
    raise ValueError(f"pooling must be 'token', 'gap' or 'map', got {pooling!r}.")
  if posemb not in ("learn", "sincos2d"):
    raise ValueError(f"posemb must be 'learn' or 'sincos2d', got {posemb!r}.")
  grid = (image_h // patch_h, image_w // patch_w)
  if batchnorm_factory is not None:
    raise ValueError(
      "A ViT has no BatchNorm, so per-member BatchNorm (ensemble.use_ensemble_bn=True) does "
      "not apply: set it to False (LayerNorm is shared by the members, as in Plex)."
    )
  if filterwise_dropout:
    raise ValueError(
      "filterwise_dropout (MCDropout.filterwise=True) drops whole channels of convolutional "
      "feature maps; a ViT has none: set MCDropout.filterwise = False (per-unit MC dropout "
      "in every MLP block)."
    )
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}; e.g. 0.1.")
  if isinstance(rep_size, bool):
    rep_size = width if rep_size else 0
  if not isinstance(rep_size, int) or rep_size < 0:
    raise ValueError(
      f"rep_size must be an int >= 0 or a bool (True: the width {width}), got {rep_size!r}; "
      "big_vision's ImageNet-1k ViT-S/16 uses True."
    )
  if not isinstance(gelu_approximate, bool):
    raise ValueError(
      f"gelu_approximate must be True (tanh GELU, flax / big_vision) or False (exact GELU), "
      f"got {gelu_approximate!r}."
    )

  if tile_before_block is not None and not 0 <= tile_before_block < depth:
    raise ValueError(
      f"tile_before_block={tile_before_block} is not a block of this "
      f"depth-{depth} ViT: use 0..{depth - 1}, or None to tile the input."
    )
  inputs = keras.Input((image_h, image_w, num_channels), name="images")
  x = inputs
  if tile_members > 1 and tile_before_block is None:
    x = _tile(tile_members, tile_train_members)(x)
  # LeCun-normal kernel: the flax nn.Conv default used by big_vision.
  x = conv_factory(
    width,
    (patch_h, patch_w),
    name="patch_embedding",
    block=None,
    strides=(patch_h, patch_w),
    padding="valid",
    kernel_initializer="lecun_normal",
  )(x)
  x = keras.layers.Reshape((grid[0] * grid[1], width), name="tokens")(x)
  if posemb == "learn":
    if pooling == "token":
      x = ClassToken(name="class_token")(x)
    x = LearnedPositionEmbedding(name="posemb")(x)
  else:
    x = SinCos2DPositionEmbedding(grid, name="posemb")(x)
    if pooling == "token":
      x = ClassToken(name="class_token")(x)
  x = keras.layers.Dropout(dropout, name="posemb_dropout")(x)

  for index in range(depth):
    if tile_members > 1 and index == tile_before_block:
      x = _tile(tile_members, tile_train_members)(x)
    x = _encoder_block(
      x,
      index,
      width=width,
      mlp_dim=mlp_dim,
      num_heads=num_heads,
      dropout=dropout,
      attention_dropout=attention_dropout,
      dense_factory=dense_factory,
      gelu_approximate=gelu_approximate,
      mc_dropout=dropout_rate,
    )
  # big_vision normalises all tokens, then pools (also for "gap" and "map").
  x = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="encoder_norm")(x)
  if pooling == "map":
    x = _map_head(
      x,
      width=width,
      mlp_dim=mlp_dim,
      num_heads=num_heads,
      dense_factory=dense_factory,
      gelu_approximate=gelu_approximate,
    )
    pooling = "token"  # The attention-pooled token is the only one left.
  x = TokenPooling(pooling, name="pool")(x)
  if rep_size:
    # big_vision: `nn.tanh(nn.Dense(rep_size, name="pre_logits")(x))`.
    x = dense_factory(
      rep_size,
      name="pre_logits",
      block="pre_logits",
      kernel_initializer="lecun_normal",
      bias_initializer="zeros",
    )(x)
    x = keras.layers.Activation("tanh", name="pre_logits_tanh")(x)
  return keras.Model(inputs, x, name=name)


def _tile(members, train_members=None):
  # Imported here: only ensemble methods need it.
  from keras_unc.layers.batch_ensemble import TileMembers

  return TileMembers(members, train_members=train_members, name="tile_members")
