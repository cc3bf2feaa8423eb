"""Heteroscedastic output layers: input-dependent Gaussian noise on the logits, MC-averaged.

Each layer samples S latent logits `u_s ~ N(μ(x), Σ(x))` with a low-rank plus diagonal
covariance and returns the log of the MC predictive, so that `softmax(output)` (or
`sigmoid(output)` for the multi-label variant) is the predictive of the package convention:

  `MCSoftmaxDenseFA`   `log mean_s softmax(u_s / τ)`, Σ(x) = V(x) V(x)ᵀ + diag(d(x)²) on logits.
  `MCSigmoidDenseFA`   `logit(mean_s sigmoid(u_s / τ))`, the same noise, independent labels.
  `HetXLDense`         the noise lives in the D-dim embedding space, then a shared linear map.

Noise draws come from `keras.random` with a `keras.random.SeedGenerator`, so the layers run
under every Keras backend. The private `_sample_noise` is the one place that draws ε.

As in edward2 (`MIN_SCALE_MONTE_CARLO`), the diagonal scale is `softplus(·) + min_scale`
with `min_scale = 1e-3`, so the noise never collapses to a point mass.
"""

import math
import numbers

import keras
from keras import ops


def _is_int(value):
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


MIN_SCALE = 1e-3  # edward2's MIN_SCALE_MONTE_CARLO.


def _check_common(num_factors, temperature, train_mc_samples, test_mc_samples):
  if not _is_int(num_factors) or num_factors < 0:
    raise ValueError(
      f"num_factors must be an int >= 0 (0 = diagonal noise only), got {num_factors!r}."
    )
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}; use 1.0 for no tempering.")
  for name, value in (("train_mc_samples", train_mc_samples), ("test_mc_samples", test_mc_samples)):
    if not _is_int(value) or value < 1:
      raise ValueError(
        f"{name} must be an int >= 1, got {value!r}; set it to the number of "
        "Monte Carlo samples to average (e.g. 1000)."
      )


class _MCHeteroscedasticBase(keras.layers.Layer):
  """Shared arguments, noise, output and config of the heteroscedastic heads (not public).

  Subclasses define `_noise_dim` (N, the last dim of ε_N) and may override `_aggregate(tempered,
  num_samples)`: `[B, S, K]` → `[B, K]` output; the default is log-mean-softmax.
  """

  _size_name = "num_classes"

  def __init__(
    self,
    size,
    num_factors,
    temperature,
    train_mc_samples,
    test_mc_samples,
    share_samples_across_batch,
    return_samples,
    seed,
    min_scale=MIN_SCALE,
    test_share_samples=False,
    **kwargs,
  ):
    super().__init__(**kwargs)
    if not min_scale >= 0:
      raise ValueError(f"min_scale must be >= 0, got {min_scale!r}; edward2 uses 1e-3.")
    if not _is_int(size) or size < 1:
      raise ValueError(f"{self._size_name} must be an int >= 1, got {size!r}.")
    _check_common(num_factors, temperature, train_mc_samples, test_mc_samples)
    self.size = int(size)
    self.num_factors = int(num_factors)
    self.temperature = float(temperature)
    self.train_mc_samples = int(train_mc_samples)
    self.test_mc_samples = int(test_mc_samples)
    self.share_samples_across_batch = bool(share_samples_across_batch)
    self.test_share_samples = bool(test_share_samples)
    self.return_samples = bool(return_samples)
    self.min_scale = float(min_scale)
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed)
    self.scale_layer = None

  def _num_samples(self, training):
    return self.train_mc_samples if training else self.test_mc_samples

  def _shares_samples(self, training):
    """Whether this call draws one set of ε for the whole batch."""
    return self.share_samples_across_batch or (not training and self.test_share_samples)

  def _sample_noise(self, batch_size, num_samples):
    """Standard normal ε: (`[B', S, R]` or None when R = 0, `[B', S, N]`), B' = 1 if shared."""
    rows = 1 if self.share_samples_across_batch else batch_size
    dtype = self.compute_dtype
    eps_factor = None
    if self.num_factors > 0:
      eps_factor = keras.random.normal(
        (rows, num_samples, self.num_factors), dtype=dtype, seed=self.seed_generator
      )
    eps_diag = keras.random.normal(
      (rows, num_samples, self._noise_dim), dtype=dtype, seed=self.seed_generator
    )
    return eps_factor, eps_diag

  def _factor(self, inputs):
    """V(x) `[B, N, R]`."""
    return ops.reshape(self.scale_layer(inputs), (-1, self._noise_dim, self.num_factors))

  def _factor_noise(self, inputs, eps_factor, dtype):
    del dtype
    # [B', S, R] @ [B, R, N] → [B, S, N] (B' = 1 broadcasts).
    return ops.matmul(eps_factor, ops.transpose(self._factor(inputs), (0, 2, 1)))

  def _diag_scale(self, inputs):
    """d(x) = softplus(Dense(x)) + min_scale, `[B, N]`."""
    return self.diag_layer(inputs) + self.min_scale

  def _noise(self, inputs, num_samples, diag=None, shared=False):
    """`V(x) ε_R + d(x) ∘ ε_N`, `[B, S, N]` (`diag` replaces d(x) when given; `shared`: one
    set of ε for the batch).
    """
    eps_factor, eps_diag = self._sample_noise(1 if shared else ops.shape(inputs)[0], num_samples)
    diag = self._diag_scale(inputs) if diag is None else diag
    noise = ops.expand_dims(diag, 1) * eps_diag
    if self.num_factors > 0:
      noise = noise + self._factor_noise(inputs, eps_factor, noise.dtype)
    return noise

  def _aggregate(self, tempered, num_samples):
    return ops.logsumexp(ops.log_softmax(tempered, axis=-1), axis=1) - math.log(num_samples)

  def _output(self, logits, num_samples):
    tempered = ops.cast(logits, "float32") / self.temperature
    out = self._aggregate(tempered, num_samples)
    return (out, tempered) if self.return_samples else out

  def compute_output_shape(self, inputs_shape):
    out = (inputs_shape[0], self.size)
    if not self.return_samples:
      return out
    s = self.train_mc_samples if self.train_mc_samples == self.test_mc_samples else None
    return out, (inputs_shape[0], s, self.size)

  def compute_output_spec(self, *args, **kwargs):
    spec = super().compute_output_spec(*args, **kwargs)  # Outputs are float32 (log-probs).
    return keras.tree.map_structure(lambda t: keras.KerasTensor(t.shape, "float32"), spec)

  def get_config(self):
    return {
      **super().get_config(),
      self._size_name: self.size,
      "num_factors": self.num_factors,
      "temperature": self.temperature,
      "train_mc_samples": self.train_mc_samples,
      "test_mc_samples": self.test_mc_samples,
      "share_samples_across_batch": self.share_samples_across_batch,
      "test_share_samples": self.test_share_samples,
      "return_samples": self.return_samples,
      "min_scale": self.min_scale,
      "seed": self.seed,
    }


class _MCFactorAnalysisBase(_MCHeteroscedasticBase):
  """Logit-space noise (N = K) with an optional parameter-efficient factor (not public)."""

  def __init__(
    self,
    size,
    num_factors=10,
    temperature=1.0,
    train_mc_samples=1000,
    test_mc_samples=1000,
    share_samples_across_batch=False,
    parameter_efficient=False,
    return_samples=False,
    seed=None,
    min_scale=MIN_SCALE,
    het_var_weight=1.0,
    loc_var_weight=1.0,
    test_share_samples=False,
    **kwargs,
  ):
    super().__init__(
      size,
      num_factors,
      temperature,
      train_mc_samples,
      test_mc_samples,
      share_samples_across_batch,
      return_samples,
      seed,
      min_scale,
      test_share_samples,
      **kwargs,
    )
    if not (het_var_weight >= 0 and loc_var_weight >= 0):
      raise ValueError(
        f"het_var_weight and loc_var_weight must be >= 0, got {het_var_weight!r} and "
        f"{loc_var_weight!r} (edward2's HetSNGP uses 1 and 1)."
      )
    self.het_var_weight = float(het_var_weight)
    self.loc_var_weight = float(loc_var_weight)
    if num_factors >= size:
      raise ValueError(
        f"num_factors={num_factors} must be smaller than {self._size_name}={size}: the "
        f"factor V(x) is {self._size_name} × num_factors and is meant to be low rank. Use "
        f"num_factors <= {size - 1} (0 = diagonal noise only)."
      )
    self.parameter_efficient = bool(parameter_efficient)
    self.loc_layer = None
    self.scale_layer_heteroscedastic = None
    self.shared_factor = None
    self.diag_layer = keras.layers.Dense(
      size, activation="softplus", name="diag", dtype=self.dtype_policy
    )

  @property
  def _noise_dim(self):
    return self.size

  def build(self, inputs_shape, loc_shape=None, loc_variance_shape=None):
    """Creates the sub-layers; the μ layer only when no `loc` is passed to `call`."""
    del loc_variance_shape
    k, r = self.size, self.num_factors
    if loc_shape is None:
      self.loc_layer = keras.layers.Dense(k, name="loc", dtype=self.dtype_policy)
      self.loc_layer.build(inputs_shape)
    elif loc_shape[-1] is not None and loc_shape[-1] != k:
      raise ValueError(
        f"loc has {loc_shape[-1]} logits but {self._size_name}={k}; pass loc of shape [B, {k}]."
      )
    self.diag_layer.build(inputs_shape)
    if r > 0 and self.parameter_efficient:
      # V(x) = diag(v(x)) V: one shared K × R matrix, scaled per example and class.
      self.scale_layer_heteroscedastic = keras.layers.Dense(
        k, name="scale_heteroscedastic", dtype=self.dtype_policy
      )
      self.scale_layer_heteroscedastic.build(inputs_shape)
      self.shared_factor = self.add_weight(
        shape=(r, k), initializer="glorot_uniform", name="shared_factor"
      )
    elif r > 0:
      self.scale_layer = keras.layers.Dense(k * r, name="scale", dtype=self.dtype_policy)
      self.scale_layer.build(inputs_shape)

  def _factor_noise(self, inputs, eps_factor, dtype):
    if not self.parameter_efficient:
      return super()._factor_noise(inputs, eps_factor, dtype)
    scale = ops.expand_dims(self.scale_layer_heteroscedastic(inputs), 1)  # [B, 1, K]
    return scale * ops.matmul(eps_factor, ops.cast(self.shared_factor, dtype))

  def _latent_samples(self, inputs, loc, num_samples, loc_variance=None, shared=False):
    """`u_s = μ + V ε_R + d ∘ ε_K`, `[B, S, K]`.

    With `loc_variance` v `[B]`, d becomes `sqrt(het_var_weight · d² + loc_var_weight · v)`
    (edward2's `HeteroscedasticSNGPLayer` at test time).
    """
    if loc is None:
      if self.loc_layer is None:
        raise ValueError(
          f"{self.name} was built with a `loc` input; keep passing loc [B, "
          f"{self.size}] (or use a fresh layer without loc)."
        )
      loc = self.loc_layer(inputs)
    loc = ops.cast(loc, self.compute_dtype)
    diag = None
    if loc_variance is not None:
      d = self._diag_scale(inputs)
      v = ops.expand_dims(ops.cast(loc_variance, d.dtype), -1)
      diag = ops.sqrt(self.het_var_weight * ops.square(d) + self.loc_var_weight * v)
    return ops.expand_dims(loc, 1) + self._noise(inputs, num_samples, diag, shared)

  def call(self, inputs, loc=None, loc_variance=None, training=None):
    num_samples = self._num_samples(training)
    if training:
      loc_variance = None  # edward2 adds the GP variance at test time only.
    shared = self._shares_samples(training)
    samples = self._latent_samples(inputs, loc, num_samples, loc_variance, shared)
    return self._output(samples, num_samples)

  def compute_output_shape(self, inputs_shape, loc_shape=None, loc_variance_shape=None):
    # Keras matches these names to the `call` arguments.
    del loc_shape, loc_variance_shape
    return super().compute_output_shape(inputs_shape)

  def get_config(self):
    return {
      **super().get_config(),
      "parameter_efficient": self.parameter_efficient,
      "het_var_weight": self.het_var_weight,
      "loc_var_weight": self.loc_var_weight,
    }


@keras.saving.register_keras_serializable(package="keras_unc")
class MCSoftmaxDenseFA(_MCFactorAnalysisBase):
  """Heteroscedastic softmax head: MC average of softmax over correlated Gaussian logit noise.

  Latent logits `u = μ(x) + V(x) ε_R + d(x) ∘ ε_K` with ε ~ N(0, I), `μ = Dense(C)(x)` (or
  the `loc` argument), `V(x) = Dense(C·R)(x)` reshaped `[B, C, R]`,
  `d(x) = softplus(Dense(C)(x)) + min_scale`.
  The output is `log mean_s softmax(u_s / τ)` `[B, C]` over S samples (logsumexp over samples),
  so `softmax(output)` is the predictive.

  Args:
    num_classes: C.
    num_factors: R, rank of the low-rank part of the covariance; 0 = diagonal noise only.
      Must be < C.
    temperature: τ > 0, the softmax temperature (a tuned hyperparameter).
    train_mc_samples: S when `training` is true.
    test_mc_samples: S otherwise (also when `training` is None).
    share_samples_across_batch: draw one set of ε for the whole batch (ε `[1, S, ·]`).
    test_share_samples: share ε across the batch in inference calls only (falsy `training`),
      whatever `share_samples_across_batch` says for training. Each example's Monte Carlo
      estimate keeps its distribution (same S, unbiased, same variance); only the errors of
      different examples become correlated. It saves the `[B, S, ·]` noise draws (a serving
      option: `benchmarks/serving.py`); training is unchanged.
    parameter_efficient: instead of `V(x) = Dense(C·R)(x)`, use `V(x) = diag(v(x)) V` with one
      shared `C × R` matrix V and `v(x) = Dense(C)(x)` (as in edward2; here V has no bias).
    return_samples: also return the tempered latent samples `u_s / τ` `[B, S, C]`.
    seed: int seed of the layer's `keras.random.SeedGenerator`.
    min_scale: added to the softplus diagonal scale (edward2: 1e-3).
    het_var_weight, loc_var_weight: at test time with a `loc_variance` v, the diagonal scale
      is `sqrt(het_var_weight · d(x)² + loc_var_weight · v)` (edward2's
      `HeteroscedasticSNGPLayer` `het_var_weight`, `sngp_var_weight`; both 1 there).

  Call args:
    inputs: `[B, D]` features.
    loc: optional `[B, C]` mean logits replacing μ(x) (e.g. the GP mean of HetSNGP). Whether a
      loc is passed is fixed at the first call: the μ layer only exists without loc.
    loc_variance: optional `[B]` variance of the loc (the GP predictive variance of
      HetSNGP), added to the diagonal noise variance in calls with falsy `training`.
    training: selects `train_mc_samples` or `test_mc_samples`.

  Example:
  >>> head = MCSoftmaxDenseFA(num_classes=10, num_factors=3, test_mc_samples=100, seed=0)
  >>> head(np.zeros([2, 16], "float32")).shape
  (2, 10)

  Reference: Collier et al., "Correlated Input-Dependent Label Noise in Large-Scale Image
  Classification", CVPR 2021.
  """

  def __init__(self, num_classes, *args, **kwargs):  # Defaults: see the base.
    super().__init__(num_classes, *args, **kwargs)

  @property
  def num_classes(self):
    return self.size


@keras.saving.register_keras_serializable(package="keras_unc")
class MCSigmoidDenseFA(_MCFactorAnalysisBase):
  """Heteroscedastic multi-label head: MC average of sigmoids over correlated logit noise.

  Same latent noise as `MCSoftmaxDenseFA` over K independent labels. With
  `p̄ = mean_s sigmoid(u_s / τ)` the output is `logit(p̄) = log p̄ − log(1 − p̄)` `[B, K]`,
  both terms computed with logsumexp over samples of `log_sigmoid(±u_s / τ)`, so
  `sigmoid(output)` is the predictive per label.

  Args:
    num_outputs: K, the number of labels.
    num_factors: R < K; 0 = diagonal noise only.
    temperature, train_mc_samples, test_mc_samples, share_samples_across_batch,
    test_share_samples, parameter_efficient, return_samples, seed, min_scale, het_var_weight,
    loc_var_weight: as in `MCSoftmaxDenseFA`.

  Example:
  >>> head = MCSigmoidDenseFA(num_outputs=5, num_factors=2, test_mc_samples=100, seed=0)
  >>> head(np.zeros([2, 16], "float32")).shape
  (2, 5)

  Reference: Collier et al., "Correlated Input-Dependent Label Noise in Large-Scale Image
  Classification", CVPR 2021.
  """

  _size_name = "num_outputs"

  def __init__(self, num_outputs, *args, **kwargs):  # Defaults: see the base.
    super().__init__(num_outputs, *args, **kwargs)

  @property
  def num_outputs(self):
    return self.size

  def _aggregate(self, tempered, num_samples):
    del num_samples  # The −log S terms of log p̄ and log(1 − p̄) cancel.
    log_p = ops.logsumexp(ops.log_sigmoid(tempered), axis=1)
    log_not_p = ops.logsumexp(ops.log_sigmoid(-tempered), axis=1)
    return log_p - log_not_p


@keras.saving.register_keras_serializable(package="keras_unc")
class HetXLDense(_MCHeteroscedasticBase):
  """HET-XL head: heteroscedastic noise in the embedding space, then one linear classifier.

  `z̃_s = z + V(z) ε_R + d(z) ∘ ε_D` with `V(z) = Dense(D·R)(z)` reshaped `[B, D, R]` and
  `d(z) = softplus(Dense(D)(z)) + min_scale`; `logits_s = z̃_s W + b` with `W` `[D, C]`. The
  output is `log mean_s softmax(logits_s / τ)` `[B, C]`. The covariance `V Vᵀ + diag(d²)` is
  D × D, so its parameter count does not grow with C. `covariance_log_det` gives its log-determinant.

  Args:
    num_classes: C.
    num_factors: R, rank of the low-rank part of the D × D covariance; 0 = diagonal only.
    temperature: τ > 0.
    train_mc_samples: S when `training` is true.
    test_mc_samples: S otherwise.
    share_samples_across_batch: draw one set of ε for the whole batch.
    test_share_samples: share ε across the batch in inference calls only (as in
      `MCSoftmaxDenseFA`); with C <= S the diagonal term is then `ε_D diag(d_b) W`, no
      `[B, S, D]` draw.
    return_samples: also return the tempered sampled logits `[B, S, C]`.
    seed: int seed of the layer's `keras.random.SeedGenerator`.
    min_scale: added to the softplus diagonal scale (edward2: 1e-3).

  Example:
  >>> head = HetXLDense(num_classes=10, num_factors=2, test_mc_samples=100, seed=0)
  >>> head(np.zeros([2, 16], "float32")).shape
  (2, 10)
  >>> head.covariance_log_det(np.zeros([2, 16], "float32")).shape
  (2,)

  Reference: Collier et al., "Massively Scaling Heteroscedastic Classifiers", ICLR 2023.
  """

  def __init__(
    self,
    num_classes,
    num_factors=10,
    temperature=1.0,
    train_mc_samples=1000,
    test_mc_samples=1000,
    share_samples_across_batch=False,
    return_samples=False,
    seed=None,
    min_scale=MIN_SCALE,
    test_share_samples=False,
    **kwargs,
  ):
    super().__init__(
      num_classes,
      num_factors,
      temperature,
      train_mc_samples,
      test_mc_samples,
      share_samples_across_batch,
      return_samples,
      seed,
      min_scale,
      test_share_samples,
      **kwargs,
    )
    self.classifier = keras.layers.Dense(num_classes, name="classifier", dtype=self.dtype_policy)
    self.diag_layer = None
    self.embed_dim = None

  @property
  def num_classes(self):
    return self.size

  @property
  def _noise_dim(self):
    return self.embed_dim

  def build(self, inputs_shape):
    d = inputs_shape[-1]
    if d is None:
      raise ValueError("HetXLDense needs a known embedding size (last input dim).")
    self.embed_dim = d
    self.classifier.build(inputs_shape)
    self.diag_layer = keras.layers.Dense(
      d, activation="softplus", name="diag", dtype=self.dtype_policy
    )
    self.diag_layer.build(inputs_shape)
    if self.num_factors > 0:
      self.scale_layer = keras.layers.Dense(
        d * self.num_factors, name="scale", dtype=self.dtype_policy
      )
      self.scale_layer.build(inputs_shape)

  def call(self, inputs, training=None):
    # `(z + V ε_R + d ∘ ε_D) W + b` computed as `(z W + b) + (d ∘ ε_D) W + ε_R (Vᵀ W)`: the
    # same sums, but the low-rank part costs B·S·R·C instead of B·S·D·(R + C), and with
    # shared samples the diagonal part `ε_D diag(d_b) W` never draws or stores [B, S, D].
    num_samples = self._num_samples(training)
    shared = self._shares_samples(training)
    eps_factor, eps_diag = self._sample_noise(1 if shared else ops.shape(inputs)[0], num_samples)
    kernel = ops.cast(self.classifier.kernel, self.compute_dtype)  # W, [D, C]
    d = self._diag_scale(inputs)  # [B, D]
    if shared and self.size <= num_samples:
      # [S, D] @ [B, D, C]: cheaper than the [B, S, D] noise when C <= S.
      diag_part = ops.einsum("sd,bdc->bsc", eps_diag[0], ops.expand_dims(d, -1) * kernel)
    else:
      diag_part = ops.matmul(ops.expand_dims(d, 1) * eps_diag, kernel)  # [B, S, C]
    logits = ops.expand_dims(self.classifier(inputs), 1) + diag_part
    if self.num_factors > 0:
      factor_w = ops.einsum("bdr,dc->brc", self._factor(inputs), kernel)  # Vᵀ W, [B, R, C]
      logits = logits + ops.matmul(eps_factor, factor_w)  # [B', S, R] @ [B, R, C]
    return self._output(logits, num_samples)

  def covariance_log_det(self, inputs):
    """`log det(V Vᵀ + diag(d²))` `[B]` of the embedding-space noise covariance.

    Matrix determinant lemma: `Σ log d² + log det(I_R + Vᵀ diag(d⁻²) V)`, an R × R Cholesky
    per example instead of D × D. Computed in float32; d is floored at 1e-12.
    """
    if not isinstance(inputs, keras.KerasTensor):
      inputs = ops.convert_to_tensor(inputs)
    if not self.built:
      self.build(tuple(inputs.shape))
    diag = ops.maximum(ops.cast(self._diag_scale(inputs), "float32"), 1e-12)
    log_det = 2.0 * ops.sum(ops.log(diag), axis=-1)
    if self.num_factors > 0:
      factor = ops.cast(self._factor(inputs), "float32")  # [B, D, R]
      scaled = factor / ops.expand_dims(diag, -1)  # diag(d⁻¹) V
      inner = ops.matmul(ops.transpose(scaled, (0, 2, 1)), scaled)
      inner = inner + ops.eye(self.num_factors, dtype="float32")
      chol = ops.cholesky(inner)
      log_det = log_det + 2.0 * ops.sum(ops.log(ops.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    return log_det
