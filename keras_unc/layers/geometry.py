"""Input checks and geometry of the layers that own their kernel and differ only in their
weights (BatchEnsemble, rank-1, Flipout, Packed-Ensembles): `input_features` for the dense
ones; `Conv2DGeometry` (kernel size, strides, padding and dilation, checked once, and the
shape, convolution and config they imply) for the channels_last 2-D convolutions.
"""

from __future__ import annotations

import keras
from keras import ops

PADDINGS = ("valid", "same")


def pair(value, name):
  """`3 -> (3, 3)`; a pair stays a pair; anything else is a clear error naming `name`."""
  if isinstance(value, int):
    return (value, value)
  value = tuple(value)
  if len(value) != 2:
    raise ValueError(f"{name} must be an int or a pair, got {value!r}.")
  return value


def input_features(layer, input_shape):
  """The last dimension of a dense layer's input (rank >= 2); fixes `layer.input_spec`."""
  if len(input_shape) < 2 or input_shape[-1] is None:
    raise ValueError(
      f"{layer.name} needs inputs of rank >= 2 with a known last dimension, "
      f"got shape {input_shape}."
    )
  d_in = input_shape[-1]
  layer.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: d_in})
  return d_in


class Conv2DGeometry:
  """Mixin of a Keras layer: `_init_geometry` in `__init__`, `_input_channels` in `build`,
  `_conv(x, kernel)` in `call`; `compute_output_shape` has `self.filters` output channels
  (a layer with another count calls `_output_shape`), `_geometry_config()` joins its config.
  """

  def _init_geometry(self, filters, kernel_size, strides, padding, dilation_rate):
    padding = padding.lower()
    if padding not in PADDINGS:
      raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}.")
    self.filters = filters
    self.kernel_size = pair(kernel_size, "kernel_size")
    self.strides = pair(strides, "strides")
    self.padding = padding
    self.dilation_rate = pair(dilation_rate, "dilation_rate")

  def _input_channels(self, input_shape):
    """The input channels of `[batch, height, width, channels]`; fixes the input spec."""
    if len(input_shape) != 4 or input_shape[-1] is None:
      raise ValueError(
        f"{self.name} needs [batch, height, width, channels] inputs with known "
        f"channels, got shape {input_shape}."
      )
    c_in = input_shape[-1]
    self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: c_in})
    return c_in

  def _conv(self, x, kernel):
    return ops.conv(
      x,
      kernel,
      strides=self.strides,
      padding=self.padding,
      data_format="channels_last",
      dilation_rate=self.dilation_rate,
    )

  def _output_shape(self, input_shape, channels):
    spatial = []
    for n, k, s, d in zip(input_shape[1:3], self.kernel_size, self.strides, self.dilation_rate):
      if n is None:
        spatial.append(None)
      elif self.padding == "same":
        spatial.append(-(-n // s))
      else:
        spatial.append((n - d * (k - 1) - 1) // s + 1)
    return (input_shape[0], *spatial, channels)

  def compute_output_shape(self, input_shape):
    return self._output_shape(input_shape, self.filters)

  def _geometry_config(self):
    return {
      "filters": self.filters,
      "kernel_size": self.kernel_size,
      "strides": self.strides,
      "padding": self.padding,
      "dilation_rate": self.dilation_rate,
    }
