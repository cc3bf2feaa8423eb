"""A shallow ensemble: M linear heads on one shared embedding, in one layer."""

import numbers

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_unc")
class ShallowEnsembleHead(keras.layers.Layer):
  """M independent linear heads on a shared feature: `[B, D]` → logits `[B, M, C]`.

  Head m computes `x W_m + b_m`; all heads live in one kernel `[M, D, C]` (one einsum) and one
  bias `[M, C]`. Each head's kernel is initialised separately on its own `[D, C]` slice (so
  e.g. Glorot fans are those of one head) and with its own seed, so the heads differ.

  Args:
    num_classes: C.
    num_heads: M >= 1.
    kernel_initializer: initializer of each head's `[D, C]` kernel.
    bias_initializer: initializer of each head's `[C]` bias.

  Example:
  >>> head = ShallowEnsembleHead(num_classes=10, num_heads=4)
  >>> head(np.zeros([2, 16], "float32")).shape
  (2, 4, 10)

  Reference: Lee et al., "Why M Heads are Better than One: Training a Diverse Ensemble of Deep
  Networks", arXiv:1511.06314, 2015.
  """

  def __init__(
    self,
    num_classes,
    num_heads,
    kernel_initializer="glorot_uniform",
    bias_initializer="zeros",
    **kwargs,
  ):
    super().__init__(**kwargs)
    for name, value in (("num_classes", num_classes), ("num_heads", num_heads)):
      if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"ShallowEnsembleHead {name} must be an int >= 1, got {value!r}.")
    self.num_classes = int(num_classes)
    self.num_heads = int(num_heads)
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.bias_initializer = keras.initializers.get(bias_initializer)

  @staticmethod
  def _per_head(initializer):
    """Initializer of `[M, ...]` that calls `initializer` on each head's slice shape.

    Keras random initializers with an int seed (unseeded ones draw one at construction) return
    the same values on every call, so head m gets a copy re-seeded with `seed + m`.
    """

    def init(shape, dtype=None):
      seed = getattr(initializer, "seed", None)
      config = initializer.get_config()
      heads = []
      for m in range(shape[0]):
        head_init = initializer
        if isinstance(seed, int) and "seed" in config:
          head_init = type(initializer).from_config({**config, "seed": seed + m})
        heads.append(head_init(shape[1:], dtype=dtype))
      return ops.stack(heads)

    return init

  def build(self, input_shape):
    d, m, c = input_shape[-1], self.num_heads, self.num_classes
    self.kernel = self.add_weight(
      shape=(m, d, c), initializer=self._per_head(self.kernel_initializer), name="kernel"
    )
    self.bias = self.add_weight(
      shape=(m, c), initializer=self._per_head(self.bias_initializer), name="bias"
    )

  def call(self, inputs):
    return ops.einsum("bd,mdc->bmc", inputs, self.kernel) + self.bias

  def compute_output_shape(self, input_shape):
    return (input_shape[0], self.num_heads, self.num_classes)

  def get_config(self):
    return {
      **super().get_config(),
      "num_classes": self.num_classes,
      "num_heads": self.num_heads,
      "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
      "bias_initializer": keras.initializers.serialize(self.bias_initializer),
    }
