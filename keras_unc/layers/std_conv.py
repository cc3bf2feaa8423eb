"""Weight-standardised convolutions (BiT's `StdConv`).

The kernel a weight-standardised convolution applies is its raw kernel standardised per output
channel over the spatial and input-channel axes (Qiao et al. 2019; Kolesnikov et al. 2020):

    w_hat[..., o] = (w[..., o] - mean(w[..., o])) / sqrt(var(w[..., o]) + epsilon)

The layers here keep the raw kernel as the variable `_kernel` (Keras' own name for the variable
behind `Conv2D.kernel`, as with LoRA) and make `layer.kernel` the *standardised* tensor. Code
that reads `layer.kernel` therefore sees the kernel the layer really applies; in particular
`keras_unc.layers.spectral_norm.SpectralNormalization` estimates σ of the standardised kernel
and runs the layer with `ŵ · min(1, c / σ(ŵ))`. (Standardising after the spectral scaling would
undo it: standardisation is invariant to the scale of `w`.) Weight lists (`layer.weights`,
`get_weights`, checkpoints, `.keras` files) hold the raw kernel, as in BiT checkpoints.

`weight_standardized(layer)` turns the (unbuilt) layer a conv factory returned into its
standardised counterpart: `keras.layers.Conv2D` -> `StdConv2D`, `Conv2DBatchEnsemble` ->
`StdConv2DBatchEnsemble`, and a `keras.layers.Wrapper` such as `SpectralNormalization` is
rebuilt around the standardised inner layer. `keras_unc.backbones.bit` applies it to every
convolution its `conv_factory` builds, so the factory hooks of the methods keep working.
"""

import keras
from keras import ops

from keras_unc.layers.batch_ensemble import Conv2DBatchEnsemble

# big_vision `bit_paper.StdConv` and big_transfer's `StandardizedConv2D`: sqrt(var + 1e-10).
DEFAULT_EPSILON = 1e-10


def standardize_kernel(kernel, epsilon=DEFAULT_EPSILON):
  """Standardises `kernel` per output channel (last axis) over all other axes, in float32.

  Args:
    kernel: a tensor or variable `[..., out]`, e.g. a Conv2D kernel `[h, w, in, out]`.
    epsilon: added to the variance before the square root.

  Returns:
    A float32 tensor of the same shape: `(w - mean) / sqrt(mean((w - mean)²) + epsilon)`.
  """
  w = ops.cast(kernel, "float32")
  axes = tuple(range(len(w.shape) - 1))
  w = w - ops.mean(w, axis=axes, keepdims=True)
  return w / ops.sqrt(ops.mean(ops.square(w), axis=axes, keepdims=True) + epsilon)


def _check_epsilon(epsilon):
  if not epsilon > 0:
    raise ValueError(
      f"epsilon must be > 0, got {epsilon!r}: use e.g. epsilon=1e-10 (BiT's weight "
      "standardisation)."
    )
  return float(epsilon)


class _StandardizedKernel:
  """Mixin: `kernel` is the standardised `_kernel` (cast to the compute dtype)."""

  @property
  def kernel(self):
    raw = getattr(self, "_kernel", None)
    if raw is None:
      if not self.built:
        raise AttributeError(f"{self.name}: build the layer before accessing `kernel`.")
      return None
    return ops.cast(standardize_kernel(raw, self.epsilon), self.compute_dtype)

  @kernel.setter
  def kernel(self, value):
    # Conv2DBatchEnsemble assigns `self.kernel`; the variable lives in `_kernel`.
    self._kernel = value


@keras.saving.register_keras_serializable(package="keras_unc")
class StdConv2D(_StandardizedKernel, keras.layers.Conv2D):
  """`keras.layers.Conv2D` with a weight-standardised kernel (BiT's `StdConv`).

  Computes `conv(x, ŵ) + bias` with `ŵ = (w - mean) / sqrt(var + epsilon)`, the mean and
  variance taken per output channel over `(height, width, in_channels)`. The standardisation
  runs in float32 in every call and is differentiable, so gradients reach the raw kernel
  through it. `layer.kernel` is `ŵ` (in the compute dtype); the variable is `layer._kernel`,
  which `layer.weights`, checkpoints and `.keras` files hold. LoRA is not supported.

  Args:
    filters, kernel_size, strides, padding, ...: as `keras.layers.Conv2D`.
    epsilon: added to the variance (1e-10 in big_vision's `bit_paper.StdConv` and
      big_transfer's TF2 `StandardizedConv2D`).
    **kwargs: the other `keras.layers.Conv2D` arguments.

  Example:
  >>> conv = StdConv2D(8, 3, padding="same", use_bias=False)
  >>> conv(np.zeros([2, 16, 16, 3], "float32")).shape
  (2, 16, 16, 8)

  Reference: Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and Weight
  Standardization", arXiv:1903.10520, 2019; Kolesnikov et al., "Big Transfer (BiT): General
  Visual Representation Learning", ECCV 2020.
  """

  def __init__(self, filters, kernel_size, epsilon=DEFAULT_EPSILON, **kwargs):
    if kwargs.get("lora_rank"):
      raise ValueError("StdConv2D does not support LoRA: pass lora_rank=None.")
    super().__init__(filters, kernel_size, **kwargs)
    self.epsilon = _check_epsilon(epsilon)

  def save_own_variables(self, store):
    # Conv2D saves `self.kernel` (here the standardised tensor); save the raw variable.
    if not self.built:
      return
    variables = [self._kernel] + ([self.bias] if self.use_bias else [])
    for i, variable in enumerate(variables):
      store[str(i)] = variable

  def get_config(self):
    return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="keras_unc")
class StdConv2DBatchEnsemble(_StandardizedKernel, Conv2DBatchEnsemble):
  """`Conv2DBatchEnsemble` whose shared kernel is weight-standardised (see `StdConv2D`).

  Member i computes `conv(x ∘ alpha_i, ŵ) ∘ gamma_i + bias_i` with the standardised shared
  kernel `ŵ`; `layer.kernel` is `ŵ`, `kernel_call(inputs, kernel)` applies the kernel it is
  given as is (so `SpectralNormalization` can wrap it).

  Args:
    filters, kernel_size, ensemble_size, ...: as `Conv2DBatchEnsemble`.
    epsilon: added to the variance, as in `StdConv2D`.

  Example:
  >>> x = TileMembers(2)(np.zeros([1, 8, 8, 3], "float32"))
  >>> StdConv2DBatchEnsemble(4, 3, ensemble_size=2, padding="same")(x).shape
  (2, 8, 8, 4)

  Reference: Wen et al., "BatchEnsemble", ICLR 2020, with the weight standardisation of
  Kolesnikov et al., "Big Transfer (BiT)", ECCV 2020.
  """

  def __init__(self, filters, kernel_size, ensemble_size, epsilon=DEFAULT_EPSILON, **kwargs):
    super().__init__(filters, kernel_size, ensemble_size, **kwargs)
    self.epsilon = _check_epsilon(epsilon)

  def get_config(self):
    return {**super().get_config(), "epsilon": self.epsilon}


def weight_standardized(layer, epsilon=DEFAULT_EPSILON):
  """The weight-standardised counterpart of an unbuilt convolution layer.

  Args:
    layer: what a conv factory returned, not yet built: a `keras.layers.Conv2D` (exactly that
      class), a `Conv2DBatchEnsemble`, a layer that is already standardised (`StdConv2D`,
      `StdConv2DBatchEnsemble`; returned as is) or a `keras.layers.Wrapper` (such as
      `SpectralNormalization`) around one of these, rebuilt around the standardised layer
      with the same arguments and name.
    epsilon: the standardisation's epsilon for converted layers.

  Returns:
    The standardised layer (a new, unbuilt one unless `layer` was already standardised).

  Raises:
    TypeError: for a built layer or a layer class without a standardised counterpart.
  """
  if isinstance(layer, (StdConv2D, StdConv2DBatchEnsemble)):
    return layer
  if layer.built:
    raise TypeError(f"weight_standardized needs an unbuilt layer; {layer.name} is built.")
  if isinstance(layer, keras.layers.Wrapper):
    config = layer.get_config()
    config.pop("layer")
    return type(layer)(weight_standardized(layer.layer, epsilon), **config)
  if type(layer) is keras.layers.Conv2D:
    return StdConv2D.from_config({**layer.get_config(), "epsilon": epsilon})
  if type(layer) is Conv2DBatchEnsemble:
    return StdConv2DBatchEnsemble.from_config({**layer.get_config(), "epsilon": epsilon})
  raise TypeError(
    f"Cannot weight-standardise {type(layer).__name__} ({layer.name}): a conv factory of a "
    "weight-standardised backbone must return keras.layers.Conv2D, Conv2DBatchEnsemble, "
    "StdConv2D, StdConv2DBatchEnsemble, or a keras.layers.Wrapper around one of them."
  )
