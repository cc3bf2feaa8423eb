"""Random-feature Gaussian-process output layer and mean-field logits (SNGP, parts 2 to 4).

`RandomFeatureGaussianProcess` returns `(logits [B, C], variance [B])`; its Laplace
precision matrix is a non-trainable variable that training calls update and that
`reset_covariance()` (called by a callback at each epoch start) sets back to zero.
`MeanFieldLogits` turns both outputs into the mean-field-adjusted logits of the paper.
`OrthogonalRandomFeatures` draws the random-feature kernel as edward2 and
uncertainty-baselines (ub) do by default.

Parity with ub's SNGP ResNets (`resnet50_sngp.py`, `wide_resnet_sngp.py`), which build
edward2's TF `RandomFeatureGaussianProcess` with `scale_random_features=False` and an
orthogonal random-feature kernel of standard deviation 0.05:

  ub flags                                      here
  gp_scale = s, gp_input_normalization=False    kernel_scale = ub_length_scale(s) = 20·sqrt(s)
  gp_input_normalization=True (s is ignored)    kernel_scale = ub_length_scale(s, True) = 20
  gp_random_feature_type = 'orf' / 'rff'        random_features = "orf" / "gaussian"
  gp_output_imagenet_initializer = True         output_initializer = RandomNormal(0.01)
  gp_cov_discount_factor, gp_cov_ridge_penalty  gp_cov_momentum, gp_cov_ridge_penalty

edward2 scales the input by `1/sqrt(s)` and draws the kernel with standard deviation σ
(0.05 in ub); `cos((h/sqrt(s)) W₀σ + b) = cos(h (W₀/ℓ) + b)` with ℓ = sqrt(s)/σ, so the
features are the same functions of h (`tests/layers/test_gaussian_process.py` checks it on
copied weights).
"""

import contextlib
import math

import keras
from keras import ops

LIKELIHOODS = ("gaussian", "logistic")
RANDOM_FEATURES = ("orf", "gaussian")
UB_RANDOM_FEATURE_STDDEV = 0.05  # ub's make_random_feature_initializer, 'orf' and 'rff'.


def ub_length_scale(gp_scale, gp_input_normalization=False, stddev=UB_RANDOM_FEATURE_STDDEV):
  """The `kernel_scale` (RBF length-scale ℓ) that reproduces ub's `gp_scale` flag.

  edward2's TF layer multiplies the input by `1/sqrt(gp_scale)` only when it does not
  layer-normalise it, and ub draws the random kernel with standard deviation `stddev`.

  Args:
    gp_scale: ub's `gp_scale` flag (edward2's `gp_kernel_scale`).
    gp_input_normalization: ub's `gp_input_normalization` flag.
    stddev: the random-feature kernel's standard deviation (0.05 in ub).

  Returns:
    ℓ = sqrt(gp_scale)/stddev, or 1/stddev with input normalisation.
  """
  if not gp_scale > 0 or not stddev > 0:
    raise ValueError(f"gp_scale and stddev must be > 0, got {gp_scale!r} and {stddev!r}.")
  return (1.0 if gp_input_normalization else math.sqrt(gp_scale)) / stddev


@keras.saving.register_keras_serializable(package="keras_unc")
class OrthogonalRandomFeatures(keras.initializers.Initializer):
  """Orthogonal random-feature kernel `[d_in, D]`: `stddev · Q · diag(n)` (Yu et al. 2016).

  Q has orthonormal columns (blocks of `d_in × d_in` orthogonal matrices side by side when
  D > d_in, as edward2's `OrthogonalRandomFeatures`); `n_j = ||z_j||`, z_j ~ N(0, I_{d_in})
  (the chi-distributed norms of a Gaussian matrix's columns) if `random_norm`, else
  `sqrt(d_in)`. The columns are then distributed like Gaussian ones but less correlated,
  which lowers the variance of the kernel approximation.

  Args:
    stddev: scale of the matrix (the Gaussian kernel's standard deviation, `1/ℓ`).
    random_norm: draw the column norms (True, edward2's default) or fix them.
    seed: int seed, or None.

  Example:
    ```python
    kernel = OrthogonalRandomFeatures(stddev=0.05, seed=0)((128, 1024))
    ```

  Reference: Yu et al., "Orthogonal Random Features", NeurIPS 2016.
  """

  def __init__(self, stddev=1.0, random_norm=True, seed=None):
    self.stddev, self.random_norm, self.seed = float(stddev), bool(random_norm), seed

  def __call__(self, shape, dtype=None):
    if len(shape) != 2:
      raise ValueError(f"OrthogonalRandomFeatures makes 2-D kernels, got shape {shape}.")
    rows, cols = int(shape[0]), int(shape[1])
    blocks = []
    for i in range(-(-cols // rows) if rows < cols else 1):
      block_seed = None if self.seed is None else int(self.seed) + 7919 * i
      square = (rows, rows) if rows < cols else (rows, cols)
      blocks.append(keras.initializers.Orthogonal(seed=block_seed)(square, dtype="float32"))
    q = ops.concatenate(blocks, axis=1)[:, :cols]
    if self.random_norm:
      norm_seed = None if self.seed is None else int(self.seed) + 104729
      z = keras.random.normal((rows, cols), dtype="float32", seed=norm_seed)
      norms = ops.sqrt(ops.sum(ops.square(z), axis=0))
    else:
      norms = ops.full((cols,), math.sqrt(rows), dtype="float32")
    return ops.cast(self.stddev * q * norms, dtype or "float32")

  def get_config(self):
    return {"stddev": self.stddev, "random_norm": self.random_norm, "seed": self.seed}


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

  Features: `φ(h) = cos(h W + b)` (times `sqrt(2/D)` if `scale_random_features`),
  D = `num_inducing`, with a fixed (non-trainable) kernel W of standard deviation
  `1/kernel_scale` (`kernel_scale` is the RBF length-scale ℓ), orthogonal
  (`random_features="orf"`, `OrthogonalRandomFeatures`) or i.i.d. Gaussian, and
  `b ~ U(0, 2π)`; `h` is first layer-normalised if `normalize_input`. Logits: `φ β (+ bias)`,
  β trainable.

  The defaults follow ub's SNGP ResNets (module docstring): unscaled, orthogonal features.
  The `sqrt(2/D)` factor of Rahimi and Recht makes `φᵀφ'` approximate the kernel, but as
  the output layer of a network it shrinks the logits by `sqrt(2/D)` (≈ 0.04 for D = 1024)
  at a Glorot-initialised β, and SNGP trains under-confident; edward2 warns against it and
  ub turns it off.

  Laplace precision `P` (`[D, D]`, non-trainable, zero at the start of each epoch). Each
  `training=True` call computes `S = Σ_b m_b φ_b φ_bᵀ` over its batch of B rows, with
  `m_b = 1` for `likelihood="gaussian"` (the edward2 / ub default) and `m_b = p_b (1 − p_b)`
  for `likelihood="logistic"`, where `p_b = sigmoid(logit_b)` if `units == 1` (binary
  logistic, exact Hessian) and `p_b = max_c softmax(logits_b)_c` otherwise (a one-number
  surrogate for the multi-class Hessian); φ and the logits enter through stop-gradient.
  Then `P ← m P + (1 − m) S / B` if `gp_cov_momentum = m ∈ (0, 1)`, or `P ← P + S` if
  `gp_cov_momentum = -1` (exact accumulation over the epoch).

  Variance: `v(x) = s · φ(x)ᵀ (s I + P)⁻¹ φ(x)` with ridge s, as edward2's TF
  `LaplaceRandomFeatureCovariance` (the ridge is added at solve time, so a moving average
  does not decay it), in calls with falsy `training`, through a Cholesky factor of the
  symmetric positive-definite `s I + P`. Training calls return zeros instead and skip the
  O(D³) factorisation.

  Device numerics (TPU-safe by construction): nothing on the device path computes in
  float64, which TPUs lack. In exact mode P sums `φφᵀ` over a whole epoch and its condition
  number reaches 1e7 to 1e8 (tens of thousands of examples, ridge 1): a float32
  factorisation then fails or loses most digits (edward2 inverts in float32). So the factor
  is computed on the host, in NumPy, in `solve_dtype` (float64 by default), once per change
  of P, and the device keeps the float32 result `F = sqrt(s) L⁻ᵀ` (L the Cholesky factor of
  `s I + P`): a call costs one float32 `[B, D] × [D, D]` matmul, `v = ‖φ F‖²`, and matches
  the float64 solve to ~1e-7 relative even at condition number 1e6
  (`tests/layers/test_gaussian_process.py`), because the ill-conditioning lives in the
  factorisation, not in applying its float32-rounded result.

  Covariance cache (TensorFlow backend): `F` and the precision it was computed from. Each
  inference call compares the cache's precision with P (an O(D²) comparison, float32) and,
  when they differ (after a training update, a reset, a checkpoint restore or any assignment
  to P): an eager call refreshes the cache on the host first; a traced call (inside a
  `tf.function`) solves on the device in float32 instead, which is exact for a
  well-conditioned P only. `refresh_covariance_cache()` refreshes it explicitly (the trainer,
  `calibrate`, `ensemble` and the export call `refresh_covariance_caches(network)` before
  every evaluation); `serve_from_cache(network)` refreshes it and, while open, builds graphs
  that read the cache alone (no comparison, no solve), for the SavedModel export. The cache
  variables are not layer weights: neither checkpoints nor `.keras` files hold them, a
  restored layer starts stale and is refreshed on demand. Under JAX there is no cache (Keras
  layers there hold no untracked state): every inference call solves in float32 on the
  device (JAX computes in float32 unless `jax_enable_x64` is set); refresh and serve from a
  cache are TensorFlow-only.

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
    scale_random_features: multiply the features by `sqrt(2/D)` (off, as in ub).
    kernel_scale: ℓ > 0; the random kernel has standard deviation `1/ℓ` (see
      `ub_length_scale` for ub's `gp_scale`).
    random_features: `"orf"` (orthogonal, edward2's and ub's default) or `"gaussian"`.
    gp_cov_momentum: m in (0, 1) for the moving average, or -1 for exact accumulation.
    gp_cov_ridge_penalty: ridge s > 0 (prior precision `s · I`, variance scale `s`).
    likelihood: one of `LIKELIHOODS` (see above).
    output_bias: add a trainable bias (zeros-initialised) to the logits.
    output_initializer: initializer of β (ub: Glorot uniform, the Keras `Dense` default;
      `RandomNormal(stddev=0.01)` with ub's `gp_output_imagenet_initializer`).
    solve_dtype: "float64" or "float32", the precision of the host factorisation that fills
      the covariance cache (the device always computes in float32; see above); None (the
      default) is "float64" under TensorFlow and "float32" under JAX, which has no host
      factorisation: "float64" is refused there.
    kernel_regularizer: regularizer of β, the output weights.
    seed: integer seed of the random features and of β's initializer, or None.
    **kwargs: base `keras.layers.Layer` arguments.

  Example:
    ```python
    h = keras.Input((128,))
    logits, variance = RandomFeatureGaussianProcess(10, kernel_scale=20.0)(h)
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
    scale_random_features=False,
    kernel_scale=1.0,
    random_features="orf",
    gp_cov_momentum=-1.0,
    gp_cov_ridge_penalty=1.0,
    likelihood="gaussian",
    output_bias=False,
    output_initializer="glorot_uniform",
    kernel_regularizer=None,
    solve_dtype=None,
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
    if random_features not in RANDOM_FEATURES:
      raise ValueError(
        f"Unknown random_features {random_features!r}: choose one of {RANDOM_FEATURES} "
        "(ub's gp_random_feature_type 'orf' is orf, 'rff' is gaussian)."
      )
    if not (0.0 < gp_cov_momentum < 1.0 or gp_cov_momentum == -1):
      raise ValueError(
        f"gp_cov_momentum must be in (0, 1) (moving average) or -1 (exact "
        f"accumulation), got {gp_cov_momentum!r}."
      )
    if not gp_cov_ridge_penalty > 0:
      raise ValueError(
        f"gp_cov_ridge_penalty must be > 0, got {gp_cov_ridge_penalty!r}: the "
        "covariance is (ridge · I + P)⁻¹ and needs a positive ridge."
      )
    if solve_dtype not in (None, "float64", "float32"):
      raise ValueError(
        f"solve_dtype must be 'float64' or 'float32', got {solve_dtype!r}: it is the "
        "precision of the host factorisation (the device always computes in float32)."
      )
    tensorflow = keras.backend.backend() == "tensorflow"
    if solve_dtype == "float64" and not tensorflow:
      raise ValueError(
        f"solve_dtype='float64' needs the TensorFlow backend (the host factorisation of the "
        f"covariance cache); under {keras.backend.backend()} the variance is solved on the "
        "device in float32: pass solve_dtype='float32' or None."
      )
    self._solve_dtype_arg = solve_dtype  # As given (the config), resolved below.
    solve_dtype = solve_dtype or ("float64" if tensorflow else "float32")
    if not kernel_scale > 0:
      raise ValueError(
        f"kernel_scale must be > 0, got {kernel_scale!r}: it is the RBF "
        "length-scale, e.g. kernel_scale=20.0 (ub's gp_scale=1)."
      )
    self.units = int(units)
    self.num_inducing = int(num_inducing)
    self.normalize_input = bool(normalize_input)
    self.scale_random_features = bool(scale_random_features)
    self.kernel_scale = float(kernel_scale)
    self.random_features_type = random_features
    self.gp_cov_momentum = float(gp_cov_momentum)
    self.gp_cov_ridge_penalty = float(gp_cov_ridge_penalty)
    self.likelihood = likelihood
    self.output_bias = bool(output_bias)
    self.output_initializer = keras.initializers.get(output_initializer)
    self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
    self.solve_dtype = solve_dtype
    self.seed = seed
    self.input_norm = (
      keras.layers.LayerNormalization(name="input_layer_norm") if self.normalize_input else None
    )
    self._cache = None  # `_CovarianceCache` (TensorFlow backend), made by `build`.
    self._serve_cached = False  # Set by `serve_from_cache`: no staleness check, no solve.

  def _seed(self, offset):
    return None if self.seed is None else int(self.seed) + offset

  def _random_kernel_initializer(self):
    stddev = 1.0 / self.kernel_scale
    if self.random_features_type == "orf":
      return OrthogonalRandomFeatures(stddev=stddev, seed=self._seed(0))
    return keras.initializers.RandomNormal(stddev=stddev, seed=self._seed(0))

  def _output_initializer(self):
    init = self.output_initializer
    if self.seed is not None and hasattr(init, "seed"):
      # A per-layer seed makes β reproducible (the config keeps the unseeded initializer).
      init = init.__class__.from_config({**init.get_config(), "seed": self._seed(2)})
    return init

  def build(self, input_shape):
    d_in, d = input_shape[-1], self.num_inducing
    if self.input_norm is not None:
      self.input_norm.build(input_shape)
    self.random_kernel = self.add_weight(
      shape=(d_in, d),
      trainable=False,
      name="random_kernel",
      initializer=self._random_kernel_initializer(),
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
      initializer=self._output_initializer(),
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
      initializer="zeros",
    )
    if keras.backend.backend() == "tensorflow":
      self._cache = _CovarianceCache(d, self.name)
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
    """`s · φᵀ (s I + P)⁻¹ φ` per row of φ `[B, D]`, float32 `[B]`: from the covariance
    cache when it was computed from the current P (refreshed first in an eager call), else
    by a float32 Cholesky solve on the device.
    """
    cache = self._cache
    if cache is None:
      return self._solved_variance(phi, ops.convert_to_tensor(self.precision_matrix))
    if self._serve_cached:
      return self._cached_variance(phi)
    if _eager_single_replica():
      self.refresh_covariance_cache()  # Host factorisation in solve_dtype, then the matmul.
      return self._cached_variance(phi)
    precision = ops.convert_to_tensor(self.precision_matrix)
    fresh = ops.all(ops.equal(precision, ops.convert_to_tensor(cache.precision)))
    return ops.cond(
      fresh,
      lambda: self._cached_variance(phi),
      lambda: self._solved_variance(phi, precision),
    )

  def _solved_variance(self, phi, precision):
    # The device fallback for a stale cache in a traced call: float32 throughout.
    precision = ops.cast(precision, "float32")
    precision = 0.5 * (precision + ops.transpose(precision))  # Exactly symmetric.
    s = self.gp_cov_ridge_penalty
    chol = ops.cholesky(precision + s * ops.eye(self.num_inducing, dtype="float32"))
    z = ops.solve_triangular(chol, ops.transpose(ops.cast(phi, "float32")), lower=True)
    return s * ops.sum(ops.square(z), axis=0)  # L⁻¹ φᵀ is [D, B].

  def _cached_variance(self, phi):
    z = ops.matmul(ops.cast(phi, "float32"), ops.convert_to_tensor(self._cache.factor))
    return ops.sum(ops.square(z), axis=1)

  def host_factor(self, precision):
    """`sqrt(s) L⁻ᵀ` (float32 `[D, D]`) of a precision P (NumPy), factorised on the host in
    `solve_dtype`, so that `v(x) = ‖φ(x) F‖²`. Raises a `ValueError` naming the fix when
    `s I + P` is not positive definite in that precision.
    """
    import numpy as np
    import scipy.linalg

    p = np.asarray(precision, self.solve_dtype)
    p = 0.5 * (p + p.T)  # Exactly symmetric.
    s = self.gp_cov_ridge_penalty
    try:
      chol = np.linalg.cholesky(p + s * np.eye(self.num_inducing, dtype=self.solve_dtype))
    except np.linalg.LinAlgError as e:
      raise ValueError(
        f"GP layer {self.name!r}: ridge · I + precision is not positive definite in "
        f"{self.solve_dtype} ({e}); its condition number is too large for "
        f"gp_cov_ridge_penalty={s}. Raise gp_cov_ridge_penalty, use solve_dtype='float64' "
        "or a covariance momentum (gp_cov_momentum in (0, 1))."
      ) from e
    inverse = scipy.linalg.solve_triangular(chol, np.eye(len(chol), dtype=chol.dtype), lower=True)
    return (np.sqrt(s) * inverse.T).astype("float32")  # z = φ L⁻ᵀ = (L⁻¹ φᵀ)ᵀ.

  def refresh_covariance_cache(self):
    """Recomputes the covariance cache from the current precision matrix if it is stale
    (eagerly, on the host: `host_factor`; before evaluation or export). Returns whether it
    did.
    """
    cache = self._cache
    if cache is None:
      return False
    precision = ops.convert_to_numpy(self.precision_matrix)
    if (precision == ops.convert_to_numpy(cache.precision)).all():
      return False
    cache.assign(precision, self.host_factor(precision))
    return True

  @property
  def covariance_cache_variables(self):
    """The cache's variables (an export must track them), or `[]` without a cache."""
    return [] if self._cache is None else [self._cache.precision, self._cache.factor]

  def reset_covariance(self):
    """Sets the precision matrix back to zero, the prior `s · I` alone (each epoch start)."""
    self.precision_matrix.assign(ops.zeros((self.num_inducing,) * 2, dtype="float32"))

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
      "random_features": self.random_features_type,
      "gp_cov_momentum": self.gp_cov_momentum,
      "gp_cov_ridge_penalty": self.gp_cov_ridge_penalty,
      "likelihood": self.likelihood,
      "output_bias": self.output_bias,
      "output_initializer": keras.initializers.serialize(self.output_initializer),
      "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
      "solve_dtype": self._solve_dtype_arg,
      "seed": self.seed,
    }


class _CovarianceCache:
  """`sqrt(s) L⁻ᵀ` (`[D, D]`, float32) and the precision it was computed from (NaN at
  first: stale). A plain object, so that neither Keras nor TensorFlow tracks its variables as
  weights of the layer (checkpoints and `.keras` files keep their layout).
  """

  def __init__(self, d, name):
    import tensorflow as tf

    self.strategy = tf.distribute.get_strategy()
    with tf.init_scope():
      self.precision = tf.Variable(
        tf.fill([d, d], float("nan")), trainable=False, name=f"{name}_cache_precision"
      )
      self.factor = tf.Variable(
        tf.zeros([d, d], tf.float32), trainable=False, name=f"{name}_cache_factor"
      )

  def assign(self, precision, factor):
    import tensorflow as tf

    scope = contextlib.nullcontext() if tf.distribute.has_strategy() else self.strategy.scope()
    with scope:
      self.factor.assign(factor)
      self.precision.assign(precision)


def _eager_single_replica():
  """Whether this call runs eagerly outside a multi-replica `tf.distribute` context (where
  the host may refresh the covariance cache before the matmul).
  """
  import tensorflow as tf

  return tf.executing_eagerly() and tf.distribute.get_strategy().num_replicas_in_sync == 1


def gaussian_process_layers(model):
  """Every `RandomFeatureGaussianProcess` in `model` (nested models and layers included)."""
  found = model._flatten_layers(include_self=True, recursive=True)
  return [layer for layer in found if isinstance(layer, RandomFeatureGaussianProcess)]


def refresh_covariance_caches(model):
  """Refreshes the covariance cache of every GP layer of `model` (see
  `RandomFeatureGaussianProcess`); call it eagerly before an evaluation. Returns the
  number of caches recomputed.
  """
  return sum(layer.refresh_covariance_cache() for layer in gaussian_process_layers(model))


@contextlib.contextmanager
def serve_from_cache(model):
  """Refreshes the GP layers' covariance caches; inside the block, functions traced through
  `model` read the cache alone (one matmul per call, no staleness check, no Cholesky): for
  a SavedModel, whose precision never changes. Yields the cache variables, which the export
  must track (`ExportArchive.add_variable_collection`).
  """
  gps = gaussian_process_layers(model)
  for layer in gps:
    layer.refresh_covariance_cache()
  try:
    for layer in gps:
      layer._serve_cached = layer._cache is not None
    yield [v for layer in gps for v in layer.covariance_cache_variables]
  finally:
    for layer in gps:
      layer._serve_cached = False


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
