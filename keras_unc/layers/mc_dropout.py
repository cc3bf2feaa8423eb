"""Always-on (MC) dropout.

MC dropout draws its S forward passes from a batch tiled S times before it (`TileMembers`),
so `MCDropout` itself is plain dropout that ignores the `training` flag.
"""

import numbers

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_unc")
class MCDropout(keras.layers.Layer):
  """Dropout that stays active at inference: zeroes each unit with probability `rate`.

  Kept units are scaled by `1 / (1 − rate)` (inverted dropout, as `keras.layers.Dropout`), so
  the expectation is unchanged. The `training` argument is accepted and ignored.

  Args:
    rate: drop probability in [0, 1); 0 is the identity.
    seed: int seed of the layer's `keras.random.SeedGenerator`.

  Example:
  >>> drop = MCDropout(0.5, seed=0)
  >>> drop(np.ones([2, 4], "float32"), training=False).shape  # Still drops.
  (2, 4)

  Reference: Gal & Ghahramani, "Dropout as a Bayesian Approximation: Representing Model
  Uncertainty in Deep Learning", ICML 2016.
  """

  def __init__(self, rate, seed=None, **kwargs):
    super().__init__(**kwargs)
    if not isinstance(rate, numbers.Real) or not 0.0 <= rate < 1.0:
      raise ValueError(f"MCDropout rate must be in [0, 1), got {rate!r}; e.g. rate=0.1.")
    self.rate = float(rate)
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed)
    self.supports_masking = True
    self.built = True

  def call(self, inputs, training=None):
    del training  # Always on: that is the point of MC dropout.
    if self.rate == 0.0:
      return inputs
    # Written out (not `keras.random.dropout`) so the scaling is ours on every backend.
    keep = keras.random.uniform(ops.shape(inputs), seed=self.seed_generator) >= self.rate
    return ops.where(keep, inputs / (1.0 - self.rate), ops.zeros_like(inputs))

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "rate": self.rate, "seed": self.seed}
