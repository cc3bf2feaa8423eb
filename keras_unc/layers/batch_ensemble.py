"""BatchEnsemble layers: one shared weight and rank-1 fast weights per ensemble member.

Convention (shared with `MemberAxis`): the batch is tiled M times by `TileMembers` before the
first BatchEnsemble layer, so a `[M * B, ...]` tensor holds member i in rows `[i*B, (i+1)*B)`.
Member i of a dense layer computes `y = ((x ∘ alpha_i) W) ∘ gamma_i + bias_i`; the conv layer
is the same with the matrix product replaced by a convolution with the shared kernel.
"""

import keras
from keras import ops

from keras_unc.layers.geometry import Conv2DGeometry, input_features

FAST_WEIGHT_INITIALIZERS = ("random_sign", "normal", "ones")


@keras.saving.register_keras_serializable(package="keras_unc")
class RandomSign(keras.initializers.RandomUniform):
  """Fills a tensor with random signs: +1 with `probability`, else −1.

  `RandomSign(0.5)` gives a symmetric ±1 initialisation of the BatchEnsemble fast weights.

  Args:
    probability: probability of +1, in [0, 1].
    seed: int, `keras.random.SeedGenerator` or None, as for the Keras random initialisers (an
      int or None seed gives the same values on every call of one initialiser object).

  Example:
  >>> layer = DenseBatchEnsemble(8, ensemble_size=4, alpha_initializer=RandomSign(0.5))

  Reference: Wen et al., "BatchEnsemble: an Alternative Approach to Efficient Ensemble and
  Lifelong Learning", ICLR 2020.
  """

  def __init__(self, probability=0.5, seed=None):
    if not 0.0 <= probability <= 1.0:
      raise ValueError(f"RandomSign probability must be in [0, 1], got {probability}.")
    self.probability = probability
    super().__init__(minval=0.0, maxval=1.0, seed=seed)

  def __call__(self, shape, dtype=None):
    dtype = dtype or keras.config.floatx()
    u = super().__call__(shape, dtype="float32")
    return ops.cast(ops.where(u < self.probability, 1.0, -1.0), dtype)

  def get_config(self):
    return {
      "probability": self.probability,
      "seed": keras.saving.serialize_keras_object(self._init_seed),
    }


@keras.saving.register_keras_serializable(package="keras_unc")
class NormalAroundOne(keras.initializers.RandomNormal):
  """Fills a tensor with samples of `N(1, stddev²)`.

  This is what uncertainty_baselines' `random_sign_init = -s` (s > 0) selects.

  Args:
    stddev: standard deviation around the mean 1.
    seed: as for `RandomSign`.

  Example:
  >>> layer = DenseBatchEnsemble(8, ensemble_size=4, gamma_initializer=NormalAroundOne(0.5))

  Reference: Wen et al., "BatchEnsemble: an Alternative Approach to Efficient Ensemble and
  Lifelong Learning", ICLR 2020.
  """

  def __init__(self, stddev=0.5, seed=None):
    super().__init__(mean=1.0, stddev=stddev, seed=seed)

  def get_config(self):
    return {"stddev": self.stddev, "seed": keras.saving.serialize_keras_object(self._init_seed)}


def get_fast_weight_initializer(identifier, stddev=0.5):
  """Resolves "random_sign", "normal" (N(1, stddev)), "ones" or any Keras initializer."""
  if isinstance(identifier, str) and identifier.lower() in FAST_WEIGHT_INITIALIZERS:
    name = identifier.lower()
    if name == "random_sign":
      return RandomSign(0.5)
    if name == "normal":
      return NormalAroundOne(stddev)
    return keras.initializers.Ones()
  return keras.initializers.get(identifier)


def _check_ensemble_size(ensemble_size, name="ensemble_size"):
  if not isinstance(ensemble_size, int) or ensemble_size < 1:
    raise ValueError(f"{name} must be an int >= 1, got {ensemble_size!r}.")


def _check_batch(inputs, ensemble_size, layer_name):
  batch = inputs.shape[0]
  if batch is not None and batch % ensemble_size:
    raise ValueError(
      f"{layer_name}: the batch dimension {batch} is not divisible by ensemble_size="
      f"{ensemble_size}. Tile the batch M times with TileMembers before the first "
      "BatchEnsemble layer (member i owns rows [i*B, (i+1)*B))."
    )


def _per_member(x, scale, shift, ensemble_size):
  """`x[i*B:(i+1)*B] * scale[i] + shift[i]` over the last axis, for every member i."""
  shape = ops.shape(x)
  y = ops.reshape(x, (ensemble_size, -1, x.shape[-1])) * scale[:, None, :]
  if shift is not None:
    y = y + shift[:, None, :]
  return ops.reshape(y, shape)


@keras.saving.register_keras_serializable(package="keras_unc")
class TileMembers(keras.layers.Layer):
  """Tiles a batch for the ensemble members: `[B, ...]` -> `[M * B, ...]`.

  Member i owns rows `[i*B, (i+1)*B)` (M copies concatenated along axis 0), the layout that
  the BatchEnsemble layers and `MemberAxis` expect.

  Args:
    num_members: M at inference (`training` false or None).
    train_members: M when called with `training=True`; defaults to `num_members`. With
      `train_members=1` the training batch is not tiled and member i sees the i-th slice.

  Example:
  >>> TileMembers(3)(np.zeros([2, 5])).shape
  (6, 5)

  Reference: Wen et al., "BatchEnsemble: an Alternative Approach to Efficient Ensemble and
  Lifelong Learning", ICLR 2020.
  """

  def __init__(self, num_members, train_members=None, **kwargs):
    super().__init__(**kwargs)
    _check_ensemble_size(num_members, "num_members")
    if train_members is not None:
      _check_ensemble_size(train_members, "train_members")
    self.num_members = num_members
    self.train_members = num_members if train_members is None else train_members

  def call(self, inputs, training=None):
    m = self.train_members if training else self.num_members
    if m == 1:
      return inputs
    return ops.tile(inputs, (m,) + (1,) * (len(inputs.shape) - 1))

  def compute_output_shape(self, input_shape):
    batch = input_shape[0]
    if batch is not None and self.train_members == self.num_members:
      batch = batch * self.num_members
    else:
      batch = None
    return (batch, *input_shape[1:])

  def get_config(self):
    return {
      **super().get_config(),
      "num_members": self.num_members,
      "train_members": self.train_members,
    }


class _BatchEnsembleBase(keras.layers.Layer):
  """Shared arguments, fast weights and config of the BatchEnsemble layers."""

  def __init__(
    self,
    ensemble_size,
    activation=None,
    use_bias=True,
    kernel_initializer="glorot_uniform",
    bias_initializer="zeros",
    alpha_initializer="random_sign",
    gamma_initializer="random_sign",
    fast_weight_stddev=0.5,
    kernel_regularizer=None,
    bias_regularizer=None,
    **kwargs,
  ):
    super().__init__(**kwargs)
    _check_ensemble_size(ensemble_size)
    self.ensemble_size = ensemble_size
    self.activation = keras.activations.get(activation)
    self.use_bias = use_bias
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.bias_initializer = keras.initializers.get(bias_initializer)
    self.fast_weight_stddev = fast_weight_stddev
    self.alpha_initializer = get_fast_weight_initializer(alpha_initializer, fast_weight_stddev)
    self.gamma_initializer = get_fast_weight_initializer(gamma_initializer, fast_weight_stddev)
    self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
    self.bias_regularizer = keras.regularizers.get(bias_regularizer)
    self.kernel = self.alpha = self.gamma = self.bias = None

  def _build_weights(self, kernel_shape, in_channels, out_channels):
    m = self.ensemble_size
    self.kernel = self.add_weight(
      name="kernel",
      shape=kernel_shape,
      initializer=self.kernel_initializer,
      regularizer=self.kernel_regularizer,
    )
    self.alpha = self.add_weight(
      name="alpha", shape=(m, in_channels), initializer=self.alpha_initializer
    )
    self.gamma = self.add_weight(
      name="gamma", shape=(m, out_channels), initializer=self.gamma_initializer
    )
    if self.use_bias:
      self.bias = self.add_weight(
        name="bias",
        shape=(m, out_channels),
        initializer=self.bias_initializer,
        regularizer=self.bias_regularizer,
      )

  def _apply(self, inputs, kernel, op):
    """`op(x ∘ alpha_i, kernel) ∘ gamma_i + bias_i`, then the activation."""
    _check_batch(inputs, self.ensemble_size, self.name)
    dtype = self.compute_dtype
    x = ops.cast(inputs, dtype)
    bias = None if self.bias is None else ops.cast(self.bias, dtype)
    x = _per_member(x, ops.cast(self.alpha, dtype), None, self.ensemble_size)
    y = op(x, ops.cast(kernel, dtype))
    y = _per_member(y, ops.cast(self.gamma, dtype), bias, self.ensemble_size)
    return self.activation(y) if self.activation is not None else y

  def call(self, inputs):
    return self.kernel_call(inputs, self.kernel)

  def get_config(self):
    ser = keras.saving.serialize_keras_object
    return {
      **super().get_config(),
      "ensemble_size": self.ensemble_size,
      "activation": keras.activations.serialize(self.activation),
      "use_bias": self.use_bias,
      "kernel_initializer": ser(self.kernel_initializer),
      "bias_initializer": ser(self.bias_initializer),
      "alpha_initializer": ser(self.alpha_initializer),
      "gamma_initializer": ser(self.gamma_initializer),
      "fast_weight_stddev": self.fast_weight_stddev,
      "kernel_regularizer": ser(self.kernel_regularizer),
      "bias_regularizer": ser(self.bias_regularizer),
    }


@keras.saving.register_keras_serializable(package="keras_unc")
class DenseBatchEnsemble(_BatchEnsembleBase):
  """Dense layer of a BatchEnsemble: shared kernel, rank-1 fast weights per member.

  Input `[M * B, ..., D_in]` (rank >= 2, e.g. ViT tokens `[M * B, T, D]`) with member i in
  rows `[i*B, (i+1)*B)`; member i computes `y = ((x ∘ alpha_i) W) ∘ gamma_i + bias_i`, then the
  activation.

  Args:
    units: output width.
    ensemble_size: M, the number of members.
    activation: Keras activation applied last.
    use_bias: whether to add the per-member bias `[M, units]`.
    kernel_initializer, bias_initializer: Keras initializers of `W` and the bias.
    alpha_initializer, gamma_initializer: "random_sign" (±1 with p = 0.5), "normal"
      (N(1, fast_weight_stddev)), "ones" or an initializer object, for the fast weights
      `alpha [M, D_in]` and `gamma [M, units]`.
    fast_weight_stddev: standard deviation of the "normal" fast-weight initialisation.
    kernel_regularizer, bias_regularizer: Keras regularizers of `W` and the bias.

  `kernel_call(inputs, kernel)` runs the layer with another kernel (e.g. spectrally
  normalised) and the layer's own fast weights and bias.

  Example:
  >>> x = TileMembers(4)(np.zeros([2, 16], "float32"))
  >>> DenseBatchEnsemble(8, ensemble_size=4)(x).shape
  (8, 8)

  Reference: Wen et al., "BatchEnsemble: an Alternative Approach to Efficient Ensemble and
  Lifelong Learning", ICLR 2020.
  """

  def __init__(self, units, ensemble_size, *args, **kwargs):  # Defaults: see the base.
    super().__init__(ensemble_size, *args, **kwargs)
    self.units = units

  def build(self, input_shape):
    d_in = input_features(self, input_shape)
    self._build_weights((d_in, self.units), d_in, self.units)

  def kernel_call(self, inputs, kernel):
    """The layer's output with `kernel` in place of `self.kernel`."""
    return self._apply(inputs, kernel, ops.matmul)

  def compute_output_shape(self, input_shape):
    return (*input_shape[:-1], self.units)

  def get_config(self):
    return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="keras_unc")
class Conv2DBatchEnsemble(Conv2DGeometry, _BatchEnsembleBase):
  """2-D convolution of a BatchEnsemble (channels_last): shared kernel, rank-1 fast weights.

  Input `[M * B, H, W, C_in]` with member i in rows `[i*B, (i+1)*B)`; member i computes
  `conv(x ∘ alpha_i, W) ∘ gamma_i + bias_i`, then the activation.

  Args:
    filters: output channels.
    kernel_size: int or (height, width).
    ensemble_size: M, the number of members.
    strides, padding ("valid" or "same"), dilation_rate: as in `keras.layers.Conv2D`.
    activation: Keras activation applied last.
    use_bias: whether to add the per-member bias `[M, filters]`.
    kernel_initializer, bias_initializer: Keras initializers of `W` and the bias.
    alpha_initializer, gamma_initializer: "random_sign", "normal", "ones" or an initializer
      object, for `alpha [M, C_in]` and `gamma [M, filters]` (see `DenseBatchEnsemble`).
    fast_weight_stddev: standard deviation of the "normal" fast-weight initialisation.
    kernel_regularizer, bias_regularizer: Keras regularizers of `W` and the bias.

  Example:
  >>> x = TileMembers(2)(np.zeros([1, 8, 8, 3], "float32"))
  >>> Conv2DBatchEnsemble(4, 3, ensemble_size=2, strides=2, padding="same")(x).shape
  (2, 4, 4, 4)

  Reference: Wen et al., "BatchEnsemble: an Alternative Approach to Efficient Ensemble and
  Lifelong Learning", ICLR 2020.
  """

  def __init__(
    self,
    filters,
    kernel_size,
    ensemble_size,
    strides=1,
    padding="valid",
    dilation_rate=1,
    *args,
    **kwargs,
  ):  # Other defaults: see the base.
    super().__init__(ensemble_size, *args, **kwargs)
    self._init_geometry(filters, kernel_size, strides, padding, dilation_rate)

  def build(self, input_shape):
    c_in = self._input_channels(input_shape)
    self._build_weights((*self.kernel_size, c_in, self.filters), c_in, self.filters)

  def kernel_call(self, inputs, kernel):
    """The layer's output with `kernel` in place of `self.kernel`."""
    return self._apply(inputs, kernel, self._conv)

  def get_config(self):
    return {**super().get_config(), **self._geometry_config()}


@keras.saving.register_keras_serializable(package="keras_unc")
class BatchNormBatchEnsemble(keras.layers.Layer):
  """BatchNorm with its own statistics, scale and offset per ensemble member (last axis).

  Input `[M * B, ..., C]` with member i in rows `[i*B, (i+1)*B)`. In training, member i is
  normalised with the mean and (biased) variance of its own rows over every axis but the
  last, `y = (x − mean_i) / sqrt(var_i + epsilon) * gamma_i + beta_i`, and its moving
  statistics move as Keras' `BatchNormalization` does:
  `moving = momentum * moving + (1 − momentum) * batch_stat`. At inference (`training`
  false, or the layer frozen with `trainable=False`) member i uses its moving statistics.
  With M = 1 this is `keras.layers.BatchNormalization` (channels last).

  This is uncertainty-baselines' `use_ensemble_bn=True` (edward2 `EnsembleSyncBatchNorm`,
  `resnet50_batchensemble.py`, `resnet50_sngp_be.py`): one BatchNorm per member, so the
  members' activation statistics are not pooled. Deviation: under `tf.distribute` the
  statistics are per replica (as Keras' BatchNormalization), where edward2 averages them
  across TPU replicas. Under Keras' JAX backend one program sees the global batch (a batch
  sharded by `keras.distribution.DataParallel` is reduced across devices by XLA), so
  there the statistics are over the global batch, as edward2's.

  Args:
    ensemble_size: M, the number of members.
    momentum: moving-average momentum (0.9 in ub, = Torch momentum 0.1).
    epsilon: added to the variance (1e-5 in ub).
    center, scale: learn `beta [M, C]` / `gamma [M, C]`.
    beta_initializer, gamma_initializer, moving_mean_initializer,
      moving_variance_initializer: Keras initializers of the `[M, C]` weights.

  Example:
  >>> x = TileMembers(2)(np.ones([3, 4, 4, 8], "float32"))
  >>> BatchNormBatchEnsemble(2)(x).shape
  (6, 4, 4, 8)

  Reference: Wen et al., "BatchEnsemble: an Alternative Approach to Efficient Ensemble and
  Lifelong Learning", ICLR 2020; Ioffe & Szegedy, "Batch Normalization", ICML 2015.
  """

  def __init__(
    self,
    ensemble_size,
    momentum=0.99,
    epsilon=1e-3,
    center=True,
    scale=True,
    beta_initializer="zeros",
    gamma_initializer="ones",
    moving_mean_initializer="zeros",
    moving_variance_initializer="ones",
    **kwargs,
  ):
    super().__init__(**kwargs)
    _check_ensemble_size(ensemble_size)
    if not 0.0 <= float(momentum) < 1.0:
      raise ValueError(f"momentum must be in [0, 1), got {momentum!r}; e.g. 0.9.")
    if not float(epsilon) > 0.0:
      raise ValueError(f"epsilon must be > 0, got {epsilon!r}; e.g. 1e-5.")
    self.ensemble_size = ensemble_size
    self.momentum = float(momentum)
    self.epsilon = float(epsilon)
    self.center, self.scale = center, scale
    self.beta_initializer = keras.initializers.get(beta_initializer)
    self.gamma_initializer = keras.initializers.get(gamma_initializer)
    self.moving_mean_initializer = keras.initializers.get(moving_mean_initializer)
    self.moving_variance_initializer = keras.initializers.get(moving_variance_initializer)
    self.supports_masking = True
    self.gamma = self.beta = self.moving_mean = self.moving_variance = None

  def build(self, input_shape):
    if len(input_shape) < 2 or input_shape[-1] is None:
      raise ValueError(
        f"{self.name} needs inputs of rank >= 2 with known channels (last axis), "
        f"got shape {input_shape}."
      )
    shape = (self.ensemble_size, input_shape[-1])

    def weight(name, initializer, trainable):
      return self.add_weight(
        name=name, shape=shape, initializer=initializer, trainable=trainable, autocast=False
      )

    if self.scale:
      self.gamma = weight("gamma", self.gamma_initializer, True)
    if self.center:
      self.beta = weight("beta", self.beta_initializer, True)
    self.moving_mean = weight("moving_mean", self.moving_mean_initializer, False)
    self.moving_variance = weight("moving_variance", self.moving_variance_initializer, False)
    self.input_spec = keras.layers.InputSpec(ndim=len(input_shape), axes={-1: input_shape[-1]})

  def call(self, inputs, training=None):
    _check_batch(inputs, self.ensemble_size, self.name)
    m, c = self.ensemble_size, inputs.shape[-1]
    shape = ops.shape(inputs)
    # float32 statistics (as Keras' BatchNormalization) also under mixed precision.
    x = ops.reshape(ops.cast(inputs, "float32"), (m, -1, c))  # Member i: x[i], [rows, C].
    if training and self.trainable:
      mean = ops.mean(x, axis=1)
      variance = ops.mean(ops.square(x - mean[:, None, :]), axis=1)
      for moving, value in ((self.moving_mean, mean), (self.moving_variance, variance)):
        moving.assign(moving * self.momentum + value * (1.0 - self.momentum))
    else:
      mean, variance = self.moving_mean, self.moving_variance
    inv = ops.rsqrt(variance + self.epsilon)
    if self.gamma is not None:
      inv = inv * self.gamma
    offset = -mean * inv
    if self.beta is not None:
      offset = offset + self.beta
    y = x * inv[:, None, :] + offset[:, None, :]
    return ops.cast(ops.reshape(y, shape), self.compute_dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    ser = keras.saving.serialize_keras_object
    return {
      **super().get_config(),
      "ensemble_size": self.ensemble_size,
      "momentum": self.momentum,
      "epsilon": self.epsilon,
      "center": self.center,
      "scale": self.scale,
      "beta_initializer": ser(self.beta_initializer),
      "gamma_initializer": ser(self.gamma_initializer),
      "moving_mean_initializer": ser(self.moving_mean_initializer),
      "moving_variance_initializer": ser(self.moving_variance_initializer),
    }
