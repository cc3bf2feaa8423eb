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
    noise_shape: None (one draw per unit) or a tuple as long as the input's rank, as in
      `keras.layers.Dropout`: a 1 shares the draw along that axis, None takes the input's
      size. `(None, 1, 1, None)` on `[B, H, W, C]` drops whole channels per example
      (spatial / filter-wise dropout, uncertainty-baselines' `filterwise_dropout=True`).

  Example:
  >>> drop = MCDropout(0.5, seed=0)
  >>> drop(np.ones([2, 4], "float32"), training=False).shape  # Still drops.
  (2, 4)

  Reference: Gal & Ghahramani, "Dropout as a Bayesian Approximation: Representing Model
  Uncertainty in Deep Learning", ICML 2016.
  """

  def __init__(self, rate, seed=None, noise_shape=None, **kwargs):
    super().__init__(**kwargs)
    if not isinstance(rate, numbers.Real) or not 0.0 <= rate < 1.0:
      raise ValueError(f"MCDropout rate must be in [0, 1), got {rate!r}; e.g. rate=0.1.")
    if noise_shape is not None:
      noise_shape = tuple(noise_shape)
      if not all(d is None or (isinstance(d, int) and d >= 1) for d in noise_shape):
        raise ValueError(
          f"MCDropout noise_shape must hold ints >= 1 or None, got {noise_shape!r}; e.g. "
          "(None, 1, 1, None) to drop whole channels of [B, H, W, C] inputs."
        )
    self.rate = float(rate)
    self.seed = seed
    self.noise_shape = noise_shape
    self.seed_generator = keras.random.SeedGenerator(seed)
    self.supports_masking = True
    self.built = True

  def call(self, inputs, training=None):
    del training  # Always on: that is the point of MC dropout.
    if self.rate == 0.0:
      return inputs
    # Written out (not `keras.random.dropout`) so the scaling is ours on every backend.
    shape = ops.shape(inputs)
    if self.noise_shape is not None:
      if len(self.noise_shape) != len(shape):
        raise ValueError(
          f"{self.name}: noise_shape {self.noise_shape} has {len(self.noise_shape)} axes, the "
          f"inputs {len(shape)} (shape {inputs.shape})."
        )
      shape = tuple(s if n is None else n for n, s in zip(self.noise_shape, shape))
    keep = keras.random.uniform(shape, seed=self.seed_generator) >= self.rate
    return ops.where(keep, inputs / (1.0 - self.rate), ops.zeros_like(inputs))

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {
      **super().get_config(),
      "rate": self.rate,
      "seed": self.seed,
      "noise_shape": self.noise_shape,
    }
