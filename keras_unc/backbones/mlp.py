"""Residual MLP backbone for vector inputs (the SNGP paper's two-moons network).

A functional Keras implementation of the deep residual MLP of the SNGP toy experiments
([Liu et al., NeurIPS 2020](https://arxiv.org/abs/2006.10108), Section 5.1 and Figure 1;
the TensorFlow SNGP tutorial's `DeepResNet`): a Dense input projection to `width` units, then
`depth` residual blocks `h <- h + dropout(act(Dense(h)))`. No output layer: the method's
head maps the `[B, width]` embedding to logits.

The input projection is frozen by default (`train_input=False`), as in the SNGP tutorial: a
fixed random projection of the input keeps distances between inputs, and the residual
blocks, spectrally normalised by the `sngp` method, keep them in the hidden space (the
bi-Lipschitz argument of the paper).

Inputs are vectors `[B, d]` (`input_dim=d`) or images `[B, H, W, C]`, flattened first (the
trainer's input path: `build_network` passes `image_size` and `num_channels`, so data stored
as `[1, 1, d]` arrays, e.g. `toy:two_moons`, arrives as `[B, 1, 1, d]`).

Every `Dense` is created by `dense_factory` (see `keras_unc.backbones.factories`), so every
method's modifiers apply (spectral normalisation, BatchEnsemble):

* input projection: `"input_dense"`, `block=None`;
* residual block `i` (0-based): `"block{i}_mlp_dense_1"`, `block=i` (the ViT naming, so
  `ensemble(blocks=(4, 5))` with its default `mlp_only=True` picks them).

Example:
```python
from keras_unc.backbones import mlp

backbone = mlp(width=128, depth=6, input_dim=2)  # [B, 2] -> [B, 128]
```
"""

import gin
import keras

from keras_unc.backbones.factories import default_dense

ACTIVATIONS = ("relu", "gelu", "tanh", "swish", "elu", "softplus", "linear")


@gin.configurable
def mlp(
  width=128,
  depth=6,
  *,
  activation="relu",
  dropout=0.1,
  train_input=False,
  input_dim=None,
  image_size=None,
  num_channels=None,
  dense_factory=default_dense,
  conv_factory=None,
  batchnorm_factory=None,
  dropout_rate=0.0,
  filterwise_dropout=False,
  tile_members=1,
  tile_train_members=None,
  tile_before_block=None,
  name="mlp",
):
  """Builds a residual MLP `[B, d] -> [B, width]` as a functional `keras.Model`.

  Reference: Liu et al., "Simple and Principled Uncertainty Estimation with Deterministic
  Deep Learning via Distance Awareness", NeurIPS 2020, https://arxiv.org/abs/2006.10108
  (two-moons experiment: width 128, 6 residual layers, dropout 0.1).

  Args:
      width: int >= 1. Hidden units of every layer (the embedding size).
      depth: int >= 0. Number of residual blocks `h + dropout(act(Dense(h)))`.
      activation: activation of the residual Dense layers, one of `ACTIVATIONS`.
      dropout: float in [0, 1). Dropout rate on each residual branch.
      train_input: bool. Train the input projection (False: a fixed random projection, as
          in the SNGP tutorial).
      input_dim: int or None. Vector input size d: inputs are `[B, d]`. None: inputs are
          images `[B, *image_size, num_channels]`, flattened first.
      image_size: int, (int, int) or None. Input height and width when `input_dim` is None.
      num_channels: int or None. Input channels when `input_dim` is None.
      dense_factory: callable building every Dense, see `keras_unc.backbones.factories`.
      conv_factory: accepted so every method's overrides fit every backbone; unused (an MLP
          has no convolution).
      batchnorm_factory: accepted so a method's overrides reach the MLP with a clear error:
          an MLP has no BatchNorm (`ensemble.use_ensemble_bn` does not apply); must be None.
      dropout_rate: float in [0, 1). MC dropout kept on at inference
          (`keras_unc.layers.mc_dropout.MCDropout`) after the activation of every residual
          branch (`MCDropout.placement = 'backbone'`), independent of `dropout`.
      filterwise_dropout: must be False: an MLP has no channels to drop whole.
      tile_members: int. Ensemble size M of BatchEnsemble layers (or MC dropout samples):
          the batch is tiled M times once (`TileMembers`), so the output is
          `[M * B, width]` with member i in rows `[i*B, (i+1)*B)`.
      tile_train_members: int or None. M in training calls (None: the same); MC dropout
          trains on one sample (1).
      tile_before_block: None tiles the input; a block index tiles the activations entering
          that residual block.
      name: str. Name of the returned model.

  Returns:
      A `keras.Model` mapping the inputs to `[B, width]` embeddings.

  Example:
  ```python
  backbone = mlp(128, 6, input_dim=2)
  logits = keras.layers.Dense(2)(backbone.output)
  classifier = keras.Model(backbone.input, logits)
  ```
  """
  del conv_factory
  if not isinstance(width, int) or width < 1:
    raise ValueError(f"mlp width must be an int >= 1, got {width!r}: e.g. width=128.")
  if not isinstance(depth, int) or depth < 0:
    raise ValueError(f"mlp depth must be an int >= 0 residual blocks, got {depth!r}: e.g. 6.")
  if activation not in ACTIVATIONS:
    raise ValueError(f"Unknown mlp activation {activation!r}: choose one of {ACTIVATIONS}.")
  if not 0 <= dropout < 1:
    raise ValueError(f"mlp dropout must be in [0, 1), got {dropout!r}: e.g. 0.1 or 0.")
  if not 0 <= dropout_rate < 1:
    raise ValueError(f"mlp dropout_rate must be in [0, 1), got {dropout_rate!r}: e.g. 0.1.")
  if batchnorm_factory is not None:
    raise ValueError(
      "An MLP has no BatchNorm, so per-member BatchNorm (ensemble.use_ensemble_bn=True) does "
      "not apply: set it to False."
    )
  if filterwise_dropout:
    raise ValueError(
      "An MLP has no channels to drop whole: set MCDropout.filterwise = False (or use a "
      "resnet / wide_resnet backbone)."
    )
  if tile_before_block is not None and tile_before_block not in range(depth):
    raise ValueError(
      f"tile_before_block={tile_before_block!r} is not a block of this {depth}-block MLP: use "
      f"an index in [0, {depth}), or None to tile the input."
    )
  if input_dim is not None:
    if not isinstance(input_dim, int) or input_dim < 1:
      raise ValueError(f"mlp input_dim must be an int >= 1 or None, got {input_dim!r}.")
    shape = (input_dim,)
  else:
    if image_size is None or num_channels is None:
      raise ValueError(
        "mlp needs its input shape: pass input_dim=d for [B, d] vectors, or image_size and "
        "num_channels (build_network passes them) for [B, H, W, C] inputs, flattened."
      )
    if isinstance(image_size, int):
      image_size = (image_size, image_size)
    shape = (*image_size, num_channels)

  inputs = keras.Input(shape, name="inputs")
  x = inputs if len(shape) == 1 else keras.layers.Flatten(name="flatten")(inputs)
  tile = dict(members=tile_members, train_members=tile_train_members)
  if tile_members > 1 and tile_before_block is None:
    x = _tile(**tile)(x)
  projection = dense_factory(width, name="input_dense", block=None)
  projection.trainable = bool(train_input)
  x = projection(x)
  for i in range(depth):
    if tile_members > 1 and tile_before_block == i:
      x = _tile(**tile)(x)
    y = dense_factory(width, name=f"block{i}_mlp_dense_1", block=i, activation=activation)(x)
    if dropout_rate:
      from keras_unc.layers.mc_dropout import MCDropout  # Only MC dropout needs it.

      y = MCDropout(dropout_rate, name=f"block{i}_mc_dropout")(y)
    if dropout:
      y = keras.layers.Dropout(dropout, name=f"block{i}_dropout")(y)
    x = keras.layers.Add(name=f"block{i}_add")([x, y])
  return keras.Model(inputs, x, name=name)


def _tile(members, train_members):
  # Imported here: only ensemble methods need it.
  from keras_unc.layers.batch_ensemble import TileMembers

  return TileMembers(members, train_members=train_members, name="tile_members")
