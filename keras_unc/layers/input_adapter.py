"""Turns raw stored images into the backbone's input, inside the model."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_unc")
class InputAdapter(keras.layers.Layer):
  """Casts, resizes and rescales raw images so a served model takes dataset pixels.

  Putting this in the model (not only in the input pipeline) is what lets the exported
  SavedModel accept `uint8 [B, H, W, C]` exactly as stored in the dataset.

  Args:
    image_size: int or (height, width) the backbone expects.
    num_channels: channels the backbone expects; 1-channel input is repeated to 3.
    value_range: (low, high) that the raw range [in_min, in_max] is mapped to.
    in_range: raw pixel range, (0, 255) for uint8 images.

  Example:
  >>> adapter = InputAdapter(image_size=32, num_channels=3)
  >>> adapter(np.zeros([2, 28, 28, 1], "uint8")).shape
  (2, 32, 32, 3)
  """

  def __init__(
    self, image_size, num_channels=3, value_range=(-1.0, 1.0), in_range=(0.0, 255.0), **kwargs
  ):
    super().__init__(**kwargs)
    self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    self.num_channels = num_channels
    self.value_range = tuple(value_range)
    self.in_range = tuple(in_range)

  def call(self, images):
    x = ops.cast(images, self.compute_dtype)
    if tuple(x.shape[1:3]) != self.image_size:
      x = ops.image.resize(x, self.image_size, interpolation="bilinear", antialias=False)
    if x.shape[-1] == 1 and self.num_channels == 3:
      x = ops.repeat(x, 3, axis=-1)
    elif x.shape[-1] != self.num_channels:
      raise ValueError(
        f"Images have {x.shape[-1]} channels but the backbone expects "
        f"{self.num_channels}; set backbone num_channels to match the data."
      )
    lo, hi = self.value_range
    in_lo, in_hi = self.in_range
    return (x - in_lo) * ((hi - lo) / (in_hi - in_lo)) + lo

  def compute_output_shape(self, input_shape):
    return (input_shape[0], *self.image_size, self.num_channels)

  def get_config(self):
    return {
      **super().get_config(),
      "image_size": self.image_size,
      "num_channels": self.num_channels,
      "value_range": self.value_range,
      "in_range": self.in_range,
    }
