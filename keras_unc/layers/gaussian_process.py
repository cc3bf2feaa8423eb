"""Random-feature Gaussian-process output layer and mean-field logits (SNGP, parts 2 to 4).

`RandomFeatureGaussianProcess` returns `(logits [B, C], variance [B])`; its Laplace
precision matrix is a non-trainable variable that training calls update and that
`reset_covariance()` (called by a callback at each epoch start) sets back to `ridge · I`.
`MeanFieldLogits` turns both outputs into the mean-field-adjusted logits of the paper.
"""

import math

import keras
from keras import ops

LIKELIHOODS = ("gaussian", "logistic")


def num_replicas_in_sync():
  """R, the number of replicas that each see their own batch in this call.

  Only `tf.distribute` runs one copy of the layer per replica; under JAX (SPMD over the
  global batch) and in TensorFlow's cross-replica or default context this is 1.
  """
  if keras.backend.backend() != "tensorflow":
    return 1
  import tensorflow as tf

  context = tf.distribute.get_replica_context()
  return 1 if context is None else int(context.num_replicas_in_sync)


@keras.saving.register_keras_serializable(package="keras_unc")
class RandomFeatureGaussianProcess(keras.layers.Layer):
  """Gaussian-process output layer with random Fourier features and a Laplace covariance.

  Features: `φ(h) = sqrt(2/D) · cos(h W + b)` (the factor only if
  `scale_random_features`), D = `num_inducing`, with fixed (non-trainable) `W ~ N(0,
  1/kernel_scale²)` (`kernel_scale` is the RBF length-scale ℓ) and `b ~ U(0, 2π)`; `h` is
  first layer-normalised if `normalize_input`. Logits: `φ β (+ bias)`, β trainable.

  Laplace precision `P` (`[D, D]`, non-trainable, initialised to `ridge · I`). Each
  `training=True` call computes `S = Σ_b m_b φ_b φ_bᵀ` over its batch of B rows, with
  `m_b = 1` for `likelihood="gaussian"` (the edward2 / uncertainty-baselines default) and
  `m_b = p_b (1 − p_b)` for `likelihood="logistic"`, where `p_b = sigmoid(logit_b)` if
  `units == 1` (binary logistic, exact Hessian) and `p_b = max_c softmax(logits_b)_c`
  otherwise (a one-number surrogate for the multi-class Hessian); φ and the logits enter
  through stop-gradient. Then `P ← m P + (1 − m) S / B` if `gp_cov_momentum = m ∈ (0, 1)`,
  or `P ← P + S` if `gp_cov_momentum = -1` (exact accumulation over the epoch).

  Variance: `v(x) = ridge · φ(x)ᵀ P⁻¹ φ(x)` in calls with falsy `training` (a linear
  solve, float32); training calls return zeros instead and skip the O(D³) solve.

  Distribution: `P` is created with `aggregation="mean"`. Under `tf.distribute` every
  replica updates from its own batch and the assigned values are averaged across the R
  replicas; in exact mode each replica adds `R · S_local`, so the mean is `P + S_global`.
  In momentum mode the mean of the local `S/B` terms already is the global `S/B` (equal
  per-replica batches). Under JAX the layer sees the global batch and R = 1.

  Mixed precision: the precision matrix and variance are float32; run this head with
  `dtype="float32"` for float32 features and logits.

  Args:
    units: C, the number of logits.
    num_inducing: D, the number of random features (≥ 1).
    normalize_input: layer-normalise the input before the random features.
    scale_random_features: multiply the features by `sqrt(2/D)`.
    kernel_scale: ℓ > 0; the random weights have standard deviation `1/ℓ`.
    gp_cov_momentum: m in (0, 1) for the moving average, or -1 for exact accumulation.
    gp_cov_ridge_penalty: ridge s > 0 (prior precision `s · I`, variance scale `s`).
    likelihood: one of `LIKELIHOODS` (see above).
    output_bias: add a trainable bias (zeros-initialised) to the logits.
    kernel_regularizer: regularizer of β, the output weights.
    seed: integer seed of the random features and of β's initializer, or None.
    **kwargs: base `keras.layers.Layer` arguments.

  Example:
    ```python
    h = keras.Input((128,))
    logits, variance = RandomFeatureGaussianProcess(10, num_inducing=1024)(h)
    logits = MeanFieldLogits()((logits, variance))
    ```

  Reference: Liu et al., "Simple and Principled Uncertainty Estimation with Deterministic
  Deep Learning via Distance Awareness", NeurIPS 2020.
  """

  def __init__(
    self,
    units,
    num_inducing=1024,
    normalize_input=False,
    scale_random_features=True,
    kernel_scale=1.0,
    gp_cov_momentum=-1.0,
    gp_cov_ridge_penalty=1.0,
    likelihood="gaussian",
    output_bias=False,
    kernel_regularizer=None,
    seed=None,
    **kwargs,
  ):
    super().__init__(**kwargs)
    if int(units) != units or units < 1:
      raise ValueError(
        f"units must be an integer >= 1, got {units!r}: pass the number of logits (classes)."
      )
    if int(num_inducing) != num_inducing or num_inducing < 1:
      raise ValueError(
        f"num_inducing must be an integer >= 1, got {num_inducing!r}: pass the "
        "number of random features, e.g. num_inducing=1024."
      )
    if likelihood not in LIKELIHOODS:
      raise ValueError(f"Unknown likelihood {likelihood!r}: choose one of {LIKELIHOODS}.")
    if not (0.0 < gp_cov_momentum < 1.0 or gp_cov_momentum == -1):
      raise ValueError(
        f"gp_cov_momentum must be in (0, 1) (moving average) or -1 (exact "
        f"accumulation), got {gp_cov_momentum!r}."
      )
    if not gp_cov_ridge_penalty > 0:
      raise ValueError(
        f"gp_cov_ridge_penalty must be > 0, got {gp_cov_ridge_penalty!r}: the "
        "precision matrix starts at ridge · I and must stay invertible."
      )
    if not kernel_scale > 0:
      raise ValueError(
        f"kernel_scale must be > 0, got {kernel_scale!r}: it is the RBF "
        "length-scale, e.g. kernel_scale=1.0."
      )
    self.units = int(units)
    self.num_inducing = int(num_inducing)
    self.normalize_input = bool(normalize_input)
    self.scale_random_features = bool(scale_random_features)
    self.kernel_scale = float(kernel_scale)
    self.gp_cov_momentum = float(gp_cov_momentum)
    self.gp_cov_ridge_penalty = float(gp_cov_ridge_penalty)
    self.likelihood = likelihood
    self.output_bias = bool(output_bias)
    self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
    self.seed = seed
    self.input_norm = (
      keras.layers.LayerNormalization(name="input_layer_norm") if self.normalize_input else None
    )

  def _seed(self, offset):
    return None if self.seed is None else int(self.seed) + offset

  def build(self, input_shape):
    d_in, d = input_shape[-1], self.num_inducing
    if self.input_norm is not None:
      self.input_norm.build(input_shape)
    self.random_kernel = self.add_weight(
      shape=(d_in, d),
      trainable=False,
      name="random_kernel",
      initializer=keras.initializers.RandomNormal(
        stddev=1.0 / self.kernel_scale, seed=self._seed(0)
      ),
    )
    self.random_bias = self.add_weight(
      shape=(d,),
      trainable=False,
      name="random_bias",
      initializer=keras.initializers.RandomUniform(0.0, 2.0 * math.pi, seed=self._seed(1)),
    )
    self.beta = self.add_weight(
      shape=(d, self.units),
      name="output_kernel",
      regularizer=self.kernel_regularizer,
      initializer=keras.initializers.GlorotUniform(seed=self._seed(2)),
    )
    self.bias = (
      self.add_weight(shape=(self.units,), initializer="zeros", name="output_bias")
      if self.output_bias
      else None
    )
    self.precision_matrix = self.add_weight(
      shape=(d, d),
      trainable=False,
      name="precision_matrix",
      dtype="float32",
      autocast=False,
      aggregation="mean",
      initializer=keras.initializers.Identity(gain=self.gp_cov_ridge_penalty),
    )
    self.built = True

  def random_features(self, inputs):
    """φ(h), `[B, num_inducing]` (after the optional layer norm)."""
    h = self.input_norm(inputs) if self.input_norm is not None else inputs
    phi = ops.cos(ops.add(ops.matmul(h, self.random_kernel), self.random_bias))
    if self.scale_random_features:
      phi = phi * math.sqrt(2.0 / self.num_inducing)
    return phi

  def call(self, inputs, training=None):
    phi = self.random_features(inputs)
    logits = ops.matmul(phi, self.beta)
    if self.bias is not None:
      logits = ops.add(logits, self.bias)
    if training:
      self._update_precision(phi, logits)
      variance = ops.zeros_like(logits[:, 0])
    else:
      variance = ops.cast(self.predictive_variance(phi), logits.dtype)
    return logits, variance

  def _update_precision(self, phi, logits):
    phi = ops.stop_gradient(ops.cast(phi, "float32"))
    weighted = phi
    if self.likelihood == "logistic":
      logits = ops.stop_gradient(ops.cast(logits, "float32"))
      if self.units == 1:
        p = ops.sigmoid(logits[:, 0])
      else:
        p = ops.max(ops.softmax(logits, axis=-1), axis=-1)
      weighted = phi * ops.expand_dims(p * (1.0 - p), -1)
    minibatch = ops.matmul(ops.transpose(phi), weighted)  # Σ_b m_b φ_b φ_bᵀ.
    p_old = ops.convert_to_tensor(self.precision_matrix)
    m = self.gp_cov_momentum
    if m > 0:
      batch = ops.cast(ops.shape(phi)[0], "float32")
      new = m * p_old + (1.0 - m) * minibatch / batch
    else:
      new = p_old + float(num_replicas_in_sync()) * minibatch
    self.precision_matrix.assign(new)

  def predictive_variance(self, phi):
    """`ridge · φᵀ P⁻¹ φ` per row of φ `[B, D]`, float32 `[B]`."""
    phi = ops.cast(phi, "float32")
    solved = ops.solve(ops.convert_to_tensor(self.precision_matrix), ops.transpose(phi))
    return self.gp_cov_ridge_penalty * ops.sum(ops.transpose(phi) * solved, axis=0)

  def reset_covariance(self):
    """Sets the precision matrix back to `ridge · I` (call at each epoch start)."""
    self.precision_matrix.assign(
      self.gp_cov_ridge_penalty * ops.eye(self.num_inducing, dtype="float32")
    )

  def compute_output_shape(self, input_shape):
    return (*input_shape[:-1], self.units), tuple(input_shape[:-1])

  def get_config(self):
    return {
      **super().get_config(),
      "units": self.units,
      "num_inducing": self.num_inducing,
      "normalize_input": self.normalize_input,
      "scale_random_features": self.scale_random_features,
      "kernel_scale": self.kernel_scale,
      "gp_cov_momentum": self.gp_cov_momentum,
      "gp_cov_ridge_penalty": self.gp_cov_ridge_penalty,
      "likelihood": self.likelihood,
      "output_bias": self.output_bias,
      "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
      "seed": self.seed,
    }


@keras.saving.register_keras_serializable(package="keras_unc")
class MeanFieldLogits(keras.layers.Layer):
  """Mean-field approximation of the GP predictive: `logits / sqrt(1 + λ · variance)`.

  Args:
    mean_field_factor: λ (π/8 approximates the probit-softmax integral); λ < 0 returns
      the logits unchanged.
    **kwargs: base `keras.layers.Layer` arguments.

  Call arguments:
    inputs: `(logits [B, C], variance [B])`, the outputs of `RandomFeatureGaussianProcess`.

  Example:
    ```python
    logits, variance = RandomFeatureGaussianProcess(10)(h)
    adjusted = MeanFieldLogits(math.pi / 8)((logits, variance))
    ```

  Reference: Liu et al., "Simple and Principled Uncertainty Estimation with Deterministic
  Deep Learning via Distance Awareness", NeurIPS 2020.
  """

  def __init__(self, mean_field_factor=math.pi / 8, **kwargs):
    super().__init__(**kwargs)
    self.mean_field_factor = float(mean_field_factor)

  def call(self, inputs):
    logits, variance = inputs
    if self.mean_field_factor < 0:
      return logits
    variance = ops.cast(variance, logits.dtype)
    scale = ops.sqrt(1.0 + self.mean_field_factor * variance)
    return logits / ops.expand_dims(scale, -1)

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[0])

  def get_config(self):
    return {**super().get_config(), "mean_field_factor": self.mean_field_factor}
