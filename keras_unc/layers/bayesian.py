"""Bayesian layers: rank-1 BNN factors and mean-field Gaussian weights with Flipout.

Both keep a Normal posterior `q = N(mean, softplus(rho)²)` over (some of) their weights, sample
it with the reparameterisation trick on every call (training and inference) from a
`keras.random.SeedGenerator` (checkpointed with the model, so a resumed run draws what the
uninterrupted one does), and add `kl_weight * KL(q || prior)` to the model's losses with
`add_loss` (`kl_weight = 1 / dataset_size` gives the per-example ELBO).

Rank-1 layers follow the BatchEnsemble layout (`TileMembers`): the batch is tiled, and a
`[N, ...]` tensor holds member i in rows `[i*N/M, (i+1)*N/M)`.
"""

import math

import keras
from keras import ops

from keras_unc.layers.batch_ensemble import (
  NormalAroundOne,
  RandomSign,
  _check_batch,
  _check_ensemble_size,
)
from keras_unc.layers.geometry import Conv2DGeometry, input_features

# uncertainty-baselines' rank-1 posterior stddev init: sqrt(p / (1 − p)) with dropout_rate p=1e-3.
RANK1_STDDEV_INIT = math.sqrt(1e-3 / (1.0 - 1e-3))


def softplus_inverse(x):
  """`log(exp(x) − 1)`: the unconstrained value whose softplus is `x` (> 0)."""
  return math.log(math.expm1(x))


def normal_kl(mean, stddev, prior_mean, prior_stddev):
  """`Σ KL(N(mean, stddev²) || N(prior_mean, prior_stddev²))`, the closed form
  `log(σ0/σ) + (σ² + (μ − μ0)²) / (2 σ0²) − 1/2` summed over all entries (float32).
  """
  var0 = prior_stddev**2
  kl = (
    math.log(prior_stddev)
    - ops.log(stddev)
    + (ops.square(stddev) + ops.square(mean - prior_mean)) / (2.0 * var0)
    - 0.5
  )
  return ops.sum(kl)


def _check_positive(value, name, example):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
    raise ValueError(f"{name} must be a number > 0, got {value!r}; e.g. {example}.")


def _check_kl_weight(value):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
    raise ValueError(
      f"kl_weight must be a number >= 0, got {value!r}; use 1 / dataset_size (the number of "
      "training examples) for the ELBO."
    )


def _mean_initializer(random_sign_init):
  """uncertainty-baselines' `_make_sign_initializer`: > 0 random signs (P(+1) = value),
  < 0 `N(1, (−value)²)`.
  """
  if isinstance(random_sign_init, bool) or not isinstance(random_sign_init, (int, float)):
    raise ValueError(f"random_sign_init must be a number, got {random_sign_init!r}; e.g. 0.5.")
  if random_sign_init > 0:
    return RandomSign(min(float(random_sign_init), 1.0))
  if random_sign_init < 0:
    return NormalAroundOne(-float(random_sign_init))
  raise ValueError("random_sign_init must be > 0 (random signs) or < 0 (N(1, -value)), got 0.")


def _stddev_initializer(stddev_init):
  """edward2's `TrainableNormal` convention: unconstrained `rho ~ TruncatedNormal(
  softplus⁻¹(stddev_init), 0.1)`, stddev `softplus(rho)`.
  """
  return keras.initializers.TruncatedNormal(mean=softplus_inverse(stddev_init), stddev=0.1)


def _expand_rows(t, ndim):
  """`[N, D]` -> `[N, 1, ..., 1, D]` to broadcast over the middle axes of a rank-`ndim` input."""
  for _ in range(ndim - 2):
    t = ops.expand_dims(t, 1)
  return t


def _rademacher(shape, seed):
  return ops.where(keras.random.uniform(shape, seed=seed) < 0.5, 1.0, -1.0)


def _check_groups(groups):
  if groups != 1:
    raise ValueError(f"Bayesian Conv2D layers support groups=1 only, got groups={groups!r}.")


class _Rank1Base(keras.layers.Layer):
  """Shared weights, sampling, KL and config of the rank-1 layers."""

  def __init__(
    self,
    ensemble_size,
    activation=None,
    use_bias=True,
    kernel_initializer="glorot_uniform",
    bias_initializer="zeros",
    random_sign_init=0.5,
    stddev_init=RANK1_STDDEV_INIT,
    prior_mean=1.0,
    prior_stddev=0.1,
    kl_weight=1.0,
    clip_value=10.0,
    kernel_regularizer=None,
    bias_regularizer=None,
    seed=None,
    **kwargs,
  ):
    super().__init__(**kwargs)
    _check_ensemble_size(ensemble_size)
    _check_positive(stddev_init, "stddev_init", "0.03 (uncertainty-baselines)")
    _check_positive(prior_stddev, "prior_stddev", "0.1 (uncertainty-baselines)")
    _check_positive(clip_value, "clip_value", "10 (edward2)")
    _check_kl_weight(kl_weight)
    self.ensemble_size = ensemble_size
    self.activation = keras.activations.get(activation)
    self.use_bias = use_bias
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.bias_initializer = keras.initializers.get(bias_initializer)
    self.random_sign_init = random_sign_init
    self.mean_initializer = _mean_initializer(random_sign_init)
    self.stddev_init = float(stddev_init)
    self.prior_mean = float(prior_mean)
    self.prior_stddev = float(prior_stddev)
    self.kl_weight = float(kl_weight)
    self.clip_value = float(clip_value)
    self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
    self.bias_regularizer = keras.regularizers.get(bias_regularizer)
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed)

  def _build_weights(self, kernel_shape, d_in, d_out):
    m = self.ensemble_size
    self.kernel = self.add_weight(
      name="kernel",
      shape=kernel_shape,
      initializer=self.kernel_initializer,
      regularizer=self.kernel_regularizer,
    )
    rho = _stddev_initializer(self.stddev_init)
    # Posterior parameters are read in float32 (autocast=False) under mixed precision: the
    # KL and its gradient stay float32 (a float16 cast would overflow the loss-scaled KL
    # gradient, e.g. (μ − 1) / σ0² = 200 for a −1 sign).
    self.alpha_mean = self.add_weight(
      name="alpha_mean", shape=(m, d_in), initializer=self.mean_initializer, autocast=False
    )
    self.alpha_rho = self.add_weight(
      name="alpha_rho", shape=(m, d_in), initializer=rho, autocast=False
    )
    self.gamma_mean = self.add_weight(
      name="gamma_mean", shape=(m, d_out), initializer=self.mean_initializer, autocast=False
    )
    self.gamma_rho = self.add_weight(
      name="gamma_rho", shape=(m, d_out), initializer=rho, autocast=False
    )
    self.bias = None
    if self.use_bias:
      self.bias = self.add_weight(
        name="bias",
        shape=(m, d_out),
        initializer=self.bias_initializer,
        regularizer=self.bias_regularizer,
      )

  def kl_divergence(self):
    """`KL(q(alpha) q(gamma) || N(prior_mean, prior_stddev²))`, summed (float32)."""
    kl = 0.0
    for mean, rho in ((self.alpha_mean, self.alpha_rho), (self.gamma_mean, self.gamma_rho)):
      mean = ops.cast(mean, "float32")
      stddev = ops.softplus(ops.cast(rho, "float32"))
      kl = kl + normal_kl(mean, stddev, self.prior_mean, self.prior_stddev)
    return kl

  def _sample(self, mean, rho, rows):
    """Per-row factors `clip(mean_i + softplus(rho_i) ε)`, ε ~ N(0, 1), `[rows, D]`."""
    d = mean.shape[-1]
    eps = keras.random.normal((rows, d), seed=self.seed_generator)
    eps = ops.reshape(eps, (self.ensemble_size, -1, d))
    mean = ops.cast(mean, "float32")[:, None, :]
    stddev = ops.softplus(ops.cast(rho, "float32"))[:, None, :]
    sample = ops.clip(mean + stddev * eps, -self.clip_value, self.clip_value)
    return ops.reshape(sample, (rows, d))

  def _apply(self, inputs, op):
    _check_batch(inputs, self.ensemble_size, self.name)
    dtype = self.compute_dtype
    x = ops.cast(inputs, dtype)
    rows, ndim = ops.shape(x)[0], len(x.shape)
    alpha = self._sample(self.alpha_mean, self.alpha_rho, rows)
    gamma = self._sample(self.gamma_mean, self.gamma_rho, rows)
    x = x * ops.cast(_expand_rows(alpha, ndim), dtype)
    y = op(x, ops.cast(self.kernel, dtype))
    y = y * ops.cast(_expand_rows(gamma, ndim), dtype)
    if self.bias is not None:
      shape = ops.shape(y)
      y = (
        ops.reshape(y, (self.ensemble_size, -1, y.shape[-1]))
        + ops.cast(self.bias, dtype)[:, None, :]
      )
      y = ops.reshape(y, shape)
    self.add_loss(self.kl_weight * self.kl_divergence())
    return self.activation(y) if self.activation is not None else y

  def get_config(self):
    ser = keras.saving.serialize_keras_object
    return {
      **super().get_config(),
      "ensemble_size": self.ensemble_size,
      "activation": keras.activations.serialize(self.activation),
      "use_bias": self.use_bias,
      "kernel_initializer": ser(self.kernel_initializer),
      "bias_initializer": ser(self.bias_initializer),
      "random_sign_init": self.random_sign_init,
      "stddev_init": self.stddev_init,
      "prior_mean": self.prior_mean,
      "prior_stddev": self.prior_stddev,
      "kl_weight": self.kl_weight,
      "clip_value": self.clip_value,
      "kernel_regularizer": ser(self.kernel_regularizer),
      "bias_regularizer": ser(self.bias_regularizer),
      "seed": self.seed,
    }


@keras.saving.register_keras_serializable(package="keras_unc")
class DenseRank1(_Rank1Base):
  """Dense layer of a rank-1 Bayesian neural network: shared kernel, Normal rank-1 factors.

  Input `[N, ..., D_in]` (N = M·K rows, member i in rows `[i*K, (i+1)*K)`, e.g. after
  `TileMembers`). Every row n of member i draws its own factors (reparameterisation, at
  training and inference)
  `r_n = clip(μ^r_i + softplus(ρ^r_i) ε, ±clip_value)`, `s_n` likewise, and computes
  `y_n = ((x_n ∘ r_n) W) ∘ s_n + b_i`, then the activation. Every call adds
  `kl_weight · Σ KL(N(μ, softplus(ρ)²) || N(prior_mean, prior_stddev²))` over the factors
  of all members with `add_loss`.

  Args:
    units: output width.
    ensemble_size: M, the mixture components (members).
    activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
      bias_regularizer: as `keras.layers.Dense` (the bias is per member, `[M, units]`).
    random_sign_init: posterior-mean init of r and s (ub `random_sign_init`): > 0 random
      signs with P(+1) = value, < 0 `N(1, value²)`.
    stddev_init: initial posterior stddev (`softplus(ρ)`, ρ ~ TruncatedNormal(softplus⁻¹(
      stddev_init), 0.1) as edward2's `TrainableNormal`); ub: sqrt(p / (1 − p)), p = 1e-3.
    prior_mean, prior_stddev: the Normal prior of every factor entry (ub: 1, 0.1).
    kl_weight: scale of the KL loss, 1 / training-set size for the ELBO.
    clip_value: samples are clipped to [−clip_value, clip_value] (edward2: 10).
    seed: int seed of the layer's `keras.random.SeedGenerator`.

  Deviation from edward2's `DenseRank1`: inputs of rank > 2 (ViT tokens) share one factor
  sample per row over the middle axes (edward2 accepts rank 2 only). The KL warm-up of ub
  is the trainer's (`Rank1.kl_annealing`, `TrainModel.layer_loss_scale`), not the layer's.

  Example:
  >>> x = TileMembers(4)(np.zeros([2, 16], "float32"))
  >>> DenseRank1(8, ensemble_size=4, kl_weight=1 / 50000)(x).shape
  (8, 8)

  Reference: Dusenberry et al., "Efficient and Scalable Bayesian Neural Nets with Rank-1
  Factors", ICML 2020 (edward2 `layers/dense.py::DenseRank1`).
  """

  def __init__(self, units, ensemble_size, *args, **kwargs):
    super().__init__(ensemble_size, *args, **kwargs)
    self.units = units

  def build(self, input_shape):
    d_in = input_features(self, input_shape)
    self._build_weights((d_in, self.units), d_in, self.units)

  def call(self, inputs):
    return self._apply(inputs, ops.matmul)

  def compute_output_shape(self, input_shape):
    return (*input_shape[:-1], self.units)

  def get_config(self):
    return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="keras_unc")
class Conv2DRank1(Conv2DGeometry, _Rank1Base):
  """2-D convolution of a rank-1 BNN (channels_last): shared kernel, Normal rank-1 factors.

  Input `[N, H, W, C_in]`, member i in rows `[i*K, (i+1)*K)`; row n of member i draws
  `r_n [C_in]`, `s_n [filters]` as `DenseRank1` does (one draw per example, shared over
  the spatial positions) and computes `conv(x_n ∘ r_n, W) ∘ s_n + b_i`, then the
  activation; the KL of the factors is added with `add_loss`, scaled by `kl_weight`.

  Args:
    filters, kernel_size, strides, padding ("valid"/"same"), dilation_rate: as
      `keras.layers.Conv2D` (groups=1 only).
    ensemble_size, and the rest: see `DenseRank1`.

  Example:
  >>> x = TileMembers(2)(np.zeros([1, 8, 8, 3], "float32"))
  >>> Conv2DRank1(4, 3, ensemble_size=2, padding="same")(x).shape
  (2, 8, 8, 4)

  Reference: Dusenberry et al., "Efficient and Scalable Bayesian Neural Nets with Rank-1
  Factors", ICML 2020 (edward2 `layers/convolutional.py::Conv2DRank1`).
  """

  def __init__(
    self,
    filters,
    kernel_size,
    ensemble_size,
    strides=1,
    padding="valid",
    dilation_rate=1,
    groups=1,
    *args,
    **kwargs,
  ):
    super().__init__(ensemble_size, *args, **kwargs)
    _check_groups(groups)
    self._init_geometry(filters, kernel_size, strides, padding, dilation_rate)

  def build(self, input_shape):
    c_in = self._input_channels(input_shape)
    self._build_weights((*self.kernel_size, c_in, self.filters), c_in, self.filters)

  def call(self, inputs):
    return self._apply(inputs, self._conv)

  def get_config(self):
    return {**super().get_config(), **self._geometry_config()}


class _FlipoutBase(keras.layers.Layer):
  """Shared weights, Flipout sampling, KL and config of the variational layers."""

  def __init__(
    self,
    activation=None,
    use_bias=True,
    kernel_initializer="glorot_uniform",
    bias_initializer="zeros",
    stddev_init=1e-3,
    prior_stddev=0.1,
    tied_mean=False,
    kl_weight=1.0,
    bias_regularizer=None,
    seed=None,
    **kwargs,
  ):
    super().__init__(**kwargs)
    _check_positive(stddev_init, "stddev_init", "1e-3 (uncertainty-baselines)")
    _check_positive(prior_stddev, "prior_stddev", "0.1 (uncertainty-baselines)")
    _check_kl_weight(kl_weight)
    if not isinstance(tied_mean, bool):
      raise ValueError(f"tied_mean must be True or False, got {tied_mean!r}.")
    self.activation = keras.activations.get(activation)
    self.use_bias = use_bias
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.bias_initializer = keras.initializers.get(bias_initializer)
    self.stddev_init = float(stddev_init)
    self.prior_stddev = float(prior_stddev)
    self.tied_mean = tied_mean
    self.kl_weight = float(kl_weight)
    self.bias_regularizer = keras.regularizers.get(bias_regularizer)
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed)

  def _build_weights(self, kernel_shape, d_out):
    # float32 reads under mixed precision (autocast=False): see `_Rank1Base._build_weights`.
    self.kernel_mean = self.add_weight(
      name="kernel_mean", shape=kernel_shape, initializer=self.kernel_initializer, autocast=False
    )
    self.kernel_rho = self.add_weight(
      name="kernel_rho",
      shape=kernel_shape,
      initializer=_stddev_initializer(self.stddev_init),
      autocast=False,
    )
    self.bias = None
    if self.use_bias:
      self.bias = self.add_weight(
        name="bias",
        shape=(d_out,),
        initializer=self.bias_initializer,
        regularizer=self.bias_regularizer,
      )

  def kl_divergence(self):
    """`KL(q(W) || N(0, prior_stddev²))` summed (float32); with `tied_mean` the prior mean is
    the posterior's (ub's `NormalKLDivergenceWithTiedMean`: only the stddev term).
    """
    mean = ops.cast(self.kernel_mean, "float32")
    stddev = ops.softplus(ops.cast(self.kernel_rho, "float32"))
    return normal_kl(mean, stddev, mean if self.tied_mean else 0.0, self.prior_stddev)

  def _apply(self, inputs, op):
    dtype = self.compute_dtype
    x = ops.cast(inputs, dtype)
    rows, ndim = ops.shape(x)[0], len(x.shape)
    stddev = ops.softplus(ops.cast(self.kernel_rho, "float32"))
    eps = keras.random.normal(tuple(self.kernel_mean.shape), seed=self.seed_generator)
    delta = ops.cast(stddev * eps, dtype)  # ΔW, one draw per call.
    d_in, d_out = self.kernel_mean.shape[-2], self.kernel_mean.shape[-1]
    sign_in = ops.cast(_expand_rows(_rademacher((rows, d_in), self.seed_generator), ndim), dtype)
    sign_out = ops.cast(_expand_rows(_rademacher((rows, d_out), self.seed_generator), ndim), dtype)
    y = op(x, ops.cast(self.kernel_mean, dtype)) + op(x * sign_in, delta) * sign_out
    if self.bias is not None:
      y = y + ops.cast(self.bias, dtype)
    self.add_loss(self.kl_weight * self.kl_divergence())
    return self.activation(y) if self.activation is not None else y

  def get_config(self):
    ser = keras.saving.serialize_keras_object
    return {
      **super().get_config(),
      "activation": keras.activations.serialize(self.activation),
      "use_bias": self.use_bias,
      "kernel_initializer": ser(self.kernel_initializer),
      "bias_initializer": ser(self.bias_initializer),
      "stddev_init": self.stddev_init,
      "prior_stddev": self.prior_stddev,
      "tied_mean": self.tied_mean,
      "kl_weight": self.kl_weight,
      "bias_regularizer": ser(self.bias_regularizer),
      "seed": self.seed,
    }


@keras.saving.register_keras_serializable(package="keras_unc")
class DenseFlipout(_FlipoutBase):
  """Dense layer with a mean-field Gaussian kernel, sampled with Flipout.

  `q(W) = N(W_mean, softplus(ρ)²)` entrywise; each call draws one `ΔW = softplus(ρ) ∘ ε`
  (ε ~ N(0, 1)) and per-row random signs `a_n [D_in]`, `b_n [units]` (±1), and computes
  `y_n = x_n W_mean + ((x_n ∘ a_n) ΔW) ∘ b_n + bias`, an unbiased sample with pseudo-
  independent weights per row; then the activation. Every call adds
  `kl_weight · Σ KL(q(W) || N(0, prior_stddev²))` with `add_loss`. The bias is deterministic
  (edward2's default).

  Args:
    units: output width.
    activation, use_bias, bias_initializer, bias_regularizer: as `keras.layers.Dense`.
    kernel_initializer: initializer of the posterior mean (the backbone's, e.g. He/Glorot).
    stddev_init: initial posterior stddev (ρ ~ TruncatedNormal(softplus⁻¹(stddev_init), 0.1),
      ub's VI recipe: 1e-3).
    prior_stddev: stddev of the N(0, prior_stddev²) prior (ub: 0.1).
    tied_mean: use ub's `NormalKLDivergenceWithTiedMean` (prior mean = posterior mean).
    kl_weight: scale of the KL loss, 1 / training-set size for the ELBO.
    seed: int seed of the layer's `keras.random.SeedGenerator`.

  Example:
  >>> DenseFlipout(8, kl_weight=1 / 50000)(np.zeros([2, 16], "float32")).shape
  (2, 8)

  Reference: Wen et al., "Flipout: Efficient Pseudo-Independent Weight Perturbations on
  Mini-Batches", ICLR 2018; Blundell et al., "Weight Uncertainty in Neural Networks", ICML
  2015 (edward2 `layers/dense.py::DenseFlipout`).
  """

  def __init__(self, units, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.units = units

  def build(self, input_shape):
    self._build_weights((input_features(self, input_shape), self.units), self.units)

  def call(self, inputs):
    return self._apply(inputs, ops.matmul)

  def compute_output_shape(self, input_shape):
    return (*input_shape[:-1], self.units)

  def get_config(self):
    return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="keras_unc")
class Conv2DFlipout(Conv2DGeometry, _FlipoutBase):
  """2-D convolution (channels_last) with a mean-field Gaussian kernel, sampled with Flipout.

  `y_n = conv(x_n, W_mean) + conv(x_n ∘ a_n, ΔW) ∘ b_n + bias`, with `ΔW = softplus(ρ) ∘ ε`
  drawn once per call and per-example random signs `a_n [C_in]`, `b_n [filters]` shared over
  the spatial positions (as edward2's `Conv2DFlipout`); KL added as `DenseFlipout`.

  Args:
    filters, kernel_size, strides, padding ("valid"/"same"), dilation_rate: as
      `keras.layers.Conv2D` (groups=1 only).
    The rest: see `DenseFlipout`.

  Example:
  >>> Conv2DFlipout(4, 3, padding="same")(np.zeros([2, 8, 8, 3], "float32")).shape
  (2, 8, 8, 4)

  Reference: Wen et al., "Flipout", ICLR 2018 (edward2
  `layers/convolutional.py::Conv2DFlipout`).
  """

  def __init__(
    self,
    filters,
    kernel_size,
    strides=1,
    padding="valid",
    dilation_rate=1,
    groups=1,
    *args,
    **kwargs,
  ):
    super().__init__(*args, **kwargs)
    _check_groups(groups)
    self._init_geometry(filters, kernel_size, strides, padding, dilation_rate)

  def build(self, input_shape):
    c_in = self._input_channels(input_shape)
    self._build_weights((*self.kernel_size, c_in, self.filters), self.filters)

  def call(self, inputs):
    return self._apply(inputs, self._conv)

  def get_config(self):
    return {**super().get_config(), **self._geometry_config()}
