"""Packed-Ensembles layers: M members' layers packed as one grouped layer of alpha-times width.

Convention (torch-uncertainty's `PackedConv2d` / `PackedLinear`): a layer of base width W
has `alpha * W` output channels (`M * W` for the last layer), split into `G = M * gamma`
contiguous groups (G = 1 for the first layer, which sees the ungrouped input); group g maps
input channels `[g*Cin/G, (g+1)*Cin/G)` to output channels `[g*Cout/G, (g+1)*Cout/G)` only.
Member m owns the groups `[m*gamma, (m+1)*gamma)`, so its channels never mix with another
member's after the first layer: the packed network is M independent subnetworks run in one
forward pass.

Deviations from torch-uncertainty, each chosen so that a width never changes silently:
channel counts that are not divisible by the groups raise a `ValueError` naming alpha,
gamma and M (torch-uncertainty rounds the channel count up); gamma is never lowered
(torch-uncertainty's convolutions lower it while fewer than `minimum_channels_per_group=64`
channels would remain per group); the last layer keeps its output `[B, ..., M*W]` with member
m in channels `[m*W, (m+1)*W)` (torch-uncertainty rearranges them into the batch, `(m b)`;
the method's head reshapes to `[B, M, W]` instead).
"""

import keras
from keras import ops

from keras_unc.layers.geometry import Conv2DGeometry, input_features

IMPLEMENTATIONS = ("split", "grouped")


def check_packed(alpha, num_estimators, gamma):
  """torch-uncertainty's `check_packed_parameters_consistency`, with the fix in the error."""
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
    raise ValueError(f"Packed-Ensembles alpha must be a number > 0, got {alpha!r}; e.g. 2.")
  if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1:
    raise ValueError(f"Packed-Ensembles gamma must be an int >= 1, got {gamma!r}; e.g. 1.")
  if isinstance(num_estimators, bool) or not isinstance(num_estimators, int) or num_estimators < 1:
    raise ValueError(
      f"Packed-Ensembles num_estimators (M) must be an int >= 1, got {num_estimators!r}; e.g. 4."
    )


def _widths(layer, units, in_channels):
  """(groups, output channels) of a packed layer; ValueError when they do not divide."""
  m, alpha, gamma = layer.num_estimators, layer.alpha, layer.gamma
  out = units * (m if layer.last else alpha)
  if abs(out - round(out)) > 1e-9:
    raise ValueError(
      f"{layer.name}: {units} channels x alpha={alpha} = {out} is not an integer: choose "
      "alpha so that every width of the backbone times alpha is an integer (e.g. alpha=2)."
    )
  out = int(round(out))
  groups = 1 if layer.first else m * gamma
  for what, n in (("input", in_channels), ("output", out)):
    if n % groups:
      raise ValueError(
        f"{layer.name}: {n} {what} channels do not split into M*gamma = {m}*{gamma} = "
        f"{groups} groups (alpha={alpha}, gamma={gamma}, num_estimators M={m}): choose "
        "alpha, gamma and M so that every width of the backbone times alpha is a multiple "
        "of M*gamma (e.g. a smaller gamma, or alpha a multiple of M)."
      )
  return groups, out


class _PackedBase(keras.layers.Layer):
  """Shared arguments, weights and config of the Packed-Ensembles layers."""

  def __init__(
    self,
    alpha=2,
    num_estimators=4,
    gamma=1,
    first=False,
    last=False,
    activation=None,
    use_bias=True,
    kernel_initializer="glorot_uniform",
    bias_initializer="zeros",
    kernel_regularizer=None,
    bias_regularizer=None,
    **kwargs,
  ):
    super().__init__(**kwargs)
    check_packed(alpha, num_estimators, gamma)
    self.alpha, self.num_estimators, self.gamma = alpha, num_estimators, gamma
    self.first, self.last = bool(first), bool(last)
    self.activation = keras.activations.get(activation)
    self.use_bias = use_bias
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.bias_initializer = keras.initializers.get(bias_initializer)
    self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
    self.bias_regularizer = keras.regularizers.get(bias_regularizer)
    self.kernel = self.bias = None
    self.groups = self.out_channels = None

  def _build_weights(self, kernel_shape):
    self.kernel = self.add_weight(
      name="kernel",
      shape=kernel_shape,
      initializer=self.kernel_initializer,
      regularizer=self.kernel_regularizer,
    )
    if self.use_bias:
      self.bias = self.add_weight(
        name="bias",
        shape=(self.out_channels,),
        initializer=self.bias_initializer,
        regularizer=self.bias_regularizer,
      )

  def _finish(self, y):
    if self.bias is not None:
      y = y + ops.cast(self.bias, self.compute_dtype)
    return self.activation(y) if self.activation is not None else y

  def get_config(self):
    ser = keras.saving.serialize_keras_object
    return {
      **super().get_config(),
      "alpha": self.alpha,
      "num_estimators": self.num_estimators,
      "gamma": self.gamma,
      "first": self.first,
      "last": self.last,
      "activation": keras.activations.serialize(self.activation),
      "use_bias": self.use_bias,
      "kernel_initializer": ser(self.kernel_initializer),
      "bias_initializer": ser(self.bias_initializer),
      "kernel_regularizer": ser(self.kernel_regularizer),
      "bias_regularizer": ser(self.bias_regularizer),
    }


@keras.saving.register_keras_serializable(package="keras_unc")
class PackedDense(_PackedBase):
  """Dense layer of a Packed-Ensemble: G = M*gamma block-diagonal groups, alpha-times width.

  Output width `alpha * units` (`M * units` if `last`); with `G = 1 if first else
  M * gamma` groups, group g computes `y_g = x_g W_g + b_g` on its slice `x_g` of
  `Cin/G` input features, `W_g [Cin/G, Cout/G]`: torch-uncertainty's `PackedLinear`
  (`packed_linear(implementation="einsum")`), i.e. a block-diagonal `W`. The kernel is
  stored as `[Cin/G, Cout]` (column block g is `W_g`), the layout of a grouped 1x1
  convolution in Keras, so its initialiser sees the per-group fan-in `Cin/G`.

  Args:
    units: base width of the layer (e.g. the number of classes for the last layer).
    alpha: width multiplier (paper: 2).
    num_estimators: M members (paper: 4).
    gamma: groups per member (paper: 1).
    first: the network's first layer: ungrouped input, G = 1.
    last: the network's last layer: `M * units` outputs (the head; gamma=1 there gives
      M groups, one per member, as torch-uncertainty's packed ResNet).
    activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
      bias_regularizer: as in `keras.layers.Dense`.

  Example:
  >>> PackedDense(10, num_estimators=4, last=True)(np.zeros([2, 64], "float32")).shape
  (2, 40)

  Reference: Laurent et al., "Packed-Ensembles for Efficient Uncertainty Estimation",
  ICLR 2023.
  """

  def __init__(self, units, *args, **kwargs):  # Other defaults: see the base.
    super().__init__(*args, **kwargs)
    self.units = units

  def build(self, input_shape):
    c_in = input_features(self, input_shape)
    self.groups, self.out_channels = _widths(self, self.units, c_in)
    self._build_weights((c_in // self.groups, self.out_channels))

  def call(self, inputs):
    x = ops.cast(inputs, self.compute_dtype)
    kernel = ops.cast(self.kernel, self.compute_dtype)
    g = self.groups
    if g == 1:
      y = ops.matmul(x, kernel)
    else:
      lead = ops.shape(x)[:-1]
      xg = ops.reshape(x, (*lead, g, x.shape[-1] // g))
      w = ops.transpose(ops.reshape(kernel, (kernel.shape[0], g, -1)), (1, 0, 2))  # [G, i, o]
      y = ops.reshape(ops.einsum("...gi,gio->...go", xg, w), (*lead, self.out_channels))
    return self._finish(y)

  def compute_output_shape(self, input_shape):
    units = self.units * (self.num_estimators if self.last else self.alpha)
    return (*input_shape[:-1], int(round(units)))

  def get_config(self):
    return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="keras_unc")
class PackedConv2D(Conv2DGeometry, _PackedBase):
  """2-D convolution of a Packed-Ensemble (channels_last): a grouped convolution.

  Output channels `alpha * filters` (`M * filters` if `last`) in `G = 1 if first else
  M * gamma` groups: group g convolves its `Cin/G` input channels into its `Cout/G` output
  channels, `y_g = conv(x_g, W_g) + b_g`: torch-uncertainty's `PackedConv2d` (an
  `nn.Conv2d(groups=G)`); the kernel is Keras' grouped layout `[kh, kw, Cin/G, Cout]`.

  Args:
    filters: base width (the convolution of the single model it packs).
    kernel_size: int or (height, width).
    alpha, num_estimators, gamma, first, last: as in `PackedDense`.
    strides, padding ("valid" or "same"), dilation_rate: as in `keras.layers.Conv2D`.
    implementation: "split" (G convolutions on the channel slices, concatenated: runs and
      differentiates on every device and in eager mode, and the TF profiler counts its
      FLOPs) or "grouped" (one grouped `ops.conv`; Keras' TensorFlow backend compiles it with
      XLA, on CPU only inside `tf.function`: its CPU kernel has no gradient).
    activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
      bias_regularizer: as in `keras.layers.Conv2D`.

  Example:
  >>> PackedConv2D(8, 3, alpha=2, num_estimators=4, padding="same")(
  ...   np.zeros([1, 6, 6, 16], "float32")).shape
  (1, 6, 6, 16)

  Reference: Laurent et al., "Packed-Ensembles for Efficient Uncertainty Estimation",
  ICLR 2023.
  """

  def __init__(
    self,
    filters,
    kernel_size,
    *args,
    strides=1,
    padding="valid",
    dilation_rate=1,
    implementation="split",
    **kwargs,
  ):  # Other defaults: see the base.
    super().__init__(*args, **kwargs)
    if implementation not in IMPLEMENTATIONS:
      raise ValueError(
        f"Unknown implementation {implementation!r}: choose one of {IMPLEMENTATIONS}."
      )
    self.implementation = implementation
    self._init_geometry(filters, kernel_size, strides, padding, dilation_rate)

  def build(self, input_shape):
    c_in = self._input_channels(input_shape)
    self.groups, self.out_channels = _widths(self, self.filters, c_in)
    self._build_weights((*self.kernel_size, c_in // self.groups, self.out_channels))

  def call(self, inputs):
    x = ops.cast(inputs, self.compute_dtype)
    kernel = ops.cast(self.kernel, self.compute_dtype)
    g = self.groups
    if g == 1 or self.implementation == "grouped":
      return self._finish(self._conv(x, kernel))
    xs = ops.split(x, g, axis=-1)
    ks = ops.split(kernel, g, axis=-1)
    return self._finish(ops.concatenate([self._conv(a, k) for a, k in zip(xs, ks)], axis=-1))

  def compute_output_shape(self, input_shape):
    out = self.filters * (self.num_estimators if self.last else self.alpha)
    return self._output_shape(input_shape, int(round(out)))

  def get_config(self):
    return {
      **super().get_config(),
      **self._geometry_config(),
      "implementation": self.implementation,
    }
