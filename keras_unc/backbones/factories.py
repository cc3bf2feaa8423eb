"""Layer factories: the hook that uncertainty methods use to swap layers.

The backbones in `keras_unc.backbones` never instantiate their weight-bearing
linear layers directly. Every `Dense` (ViT attention projections and MLP) and
every `Conv2D` (ViT patch embedding, all ResNet convolutions) is created by
calling a *factory*:

```python
layer = dense_factory(units, name=name, block=block, **kwargs)
layer = conv_factory(filters, kernel_size, name=name, block=block, **kwargs)
```

`name` is the unique layer name inside the model and `block` says where the
layer sits, so a method can decide per layer what to build:

* ViT: `block` is the encoder block index `0 .. depth - 1`, or `None` for
  layers outside the encoder blocks (the patch embedding conv).
* ResNet: `block` is a string `"stage{s}_block{b}"` (both 1-based; stage 1 is
  torchvision's `layer1`), or `None` for the stem conv.

The remaining `**kwargs` are ordinary `keras.layers.Dense` / `Conv2D` keyword
arguments (`strides`, `padding`, `use_bias`, `kernel_initializer`, ...) and
must be forwarded. A factory has to return a layer with the same call
signature and output shape as the layer it replaces. For example, BatchEnsemble
in the MLP of the last two blocks of a depth-12 ViT:

```python
def be_dense(units, *, name, block=None, **kwargs):
    if block is not None and block >= 10 and "_mlp_dense_" in name:
        return BatchEnsembleDense(units, ensemble_size=4, name=name, **kwargs)
    return default_dense(units, name=name, block=block, **kwargs)

model = vit("S/16", dense_factory=be_dense)
```

A factory whose layers are wider than asked by a constant factor (Packed-Ensembles:
`alpha * filters` channels) sets the attribute `width_factor` on itself; ResNet and Wide
ResNet compare channel counts times it when they choose identity or projection shortcuts.

BatchNorm layers (ResNet, Wide ResNet) come from `batchnorm_factory(name=name,
block=block, **kwargs)` in the same way (`default_batchnorm`).

The layers returned become ordinary layers of a functional `keras.Model`, so
they must be serialisable (registered with
`keras.saving.register_keras_serializable`) for `.keras` round trips.
"""

import keras


def default_dense(units, *, name, block=None, **kwargs):
  """Default dense factory: a plain `keras.layers.Dense`.

  Args:
      units: int. Output dimension.
      name: str. Layer name, unique within the model.
      block: int, str or None. Position of the layer in the backbone (see
          the module docstring); ignored by this default factory.
      **kwargs: forwarded to `keras.layers.Dense`.

  Returns:
      A `keras.layers.Dense` layer.

  Example:
  ```python
  layer = default_dense(64, name="block0_mlp_dense_1", block=0)
  ```
  """
  del block  # The default does the same thing everywhere.
  return keras.layers.Dense(units, name=name, **kwargs)


def default_conv(filters, kernel_size, *, name, block=None, **kwargs):
  """Default convolution factory: a plain `keras.layers.Conv2D`.

  Args:
      filters: int. Number of output channels.
      kernel_size: int or (int, int). Spatial size of the kernel.
      name: str. Layer name, unique within the model.
      block: int, str or None. Position of the layer in the backbone (see
          the module docstring); ignored by this default factory.
      **kwargs: forwarded to `keras.layers.Conv2D`.

  Returns:
      A `keras.layers.Conv2D` layer.

  Example:
  ```python
  layer = default_conv(
      64, 3, name="stage1_block1_conv2", block="stage1_block1",
      padding="same", use_bias=False,
  )
  ```
  """
  del block
  return keras.layers.Conv2D(filters, kernel_size, name=name, **kwargs)


def default_batchnorm(*, name, block=None, **kwargs):
  """Default BatchNorm factory: a plain `keras.layers.BatchNormalization`.

  ResNet and Wide ResNet build every BatchNorm through `batchnorm_factory(name=..., block=...,
  momentum=..., epsilon=..., gamma_initializer=...)`, with the same `block` as the
  convolution before it (`None` for the stem and the Wide ResNet's final BatchNorm), so a
  method can swap it (BatchEnsemble's per-member BatchNorm, `modifiers.Ensemble`).

  Args:
      name: str. Layer name, unique within the model.
      block: str or None. Position of the layer in the backbone; ignored here.
      **kwargs: forwarded to `keras.layers.BatchNormalization`.

  Returns:
      A `keras.layers.BatchNormalization` layer.

  Example:
  ```python
  layer = default_batchnorm(name="stage1_block1_bn1", block="stage1_block1", epsilon=1e-5)
  ```
  """
  del block
  return keras.layers.BatchNormalization(name=name, **kwargs)
