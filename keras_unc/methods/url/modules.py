"""Uncertainty modules of the URL benchmark: a scalar uncertainty `[B]` for any backbone.

`representation, uncertainty = model(images)`: these layers compute the `uncertainty`
from the embedding (`PredNet`, `EmbeddingNormUncertainty`) or from the head's logits
(`JensenShannonUncertainty`; the class entropy reuses `UncertaintyScore("entropy")`).
`UncertaintyRescale` optionally rescales any of them so its mean starts at a chosen value.

Reference: Kirchhof et al., "URL: A Representation Learning Benchmark for Transferable
Uncertainty Estimates", NeurIPS D&B 2023 (`timm/models/_uncertainizer.py` of mkirchhof/url).
"""

import keras
from keras import ops


def _entropy(probs, axis=-1):
  return -ops.sum(ops.where(probs > 0, probs * ops.log(ops.maximum(probs, 1e-30)), 0.0), axis=axis)


@keras.saving.register_keras_serializable(package="keras_unc")
class PredNet(keras.layers.Layer):
  """MLP on the embedding predicting a positive uncertainty: `softplus(MLP(z)) + 1e-6`.

  `depth` hidden layers of `width` units with LeakyReLU, then one output unit.

  Args:
    width: hidden width (URL: `--unc_width`, 1024).
    depth: number of hidden layers (URL: `--unc_depth`, 3).
    stop_gradient: do not let the module's gradient reach the embedding (URL `--stopgrad`).
    kernel_initializer: of every Dense ("zeros" gives the reference's `init_prednet_zero`).

  Example:
  >>> PredNet(width=8, depth=2)(np.zeros([4, 16], "float32")).shape
  (4,)
  """

  def __init__(
    self, width=1024, depth=3, stop_gradient=False, kernel_initializer="glorot_uniform", **kwargs
  ):
    super().__init__(**kwargs)
    if int(width) < 1 or int(depth) < 1:
      raise ValueError(
        f"PredNet needs width >= 1 and depth >= 1, got width={width}, depth={depth}."
      )
    self.width, self.depth = int(width), int(depth)
    self.stop_gradient = bool(stop_gradient)
    self.kernel_initializer = kernel_initializer
    self.hidden = [
      keras.layers.Dense(
        self.width,
        kernel_initializer=kernel_initializer,
        name=f"hidden_{i}",
        dtype=self.dtype_policy,
      )
      for i in range(self.depth)
    ]
    self.out = keras.layers.Dense(
      1, kernel_initializer=kernel_initializer, name="out", dtype=self.dtype_policy
    )

  def build(self, input_shape):
    shape = tuple(input_shape)
    for layer in self.hidden:
      layer.build(shape)
      shape = shape[:-1] + (self.width,)
    self.out.build(shape)

  def call(self, embedding):
    x = ops.stop_gradient(embedding) if self.stop_gradient else embedding
    for layer in self.hidden:
      x = ops.leaky_relu(layer(x), negative_slope=0.01)  # torch.nn.LeakyReLU's default.
    return ops.softplus(ops.cast(self.out(x), "float32"))[:, 0] + 1e-6

  def compute_output_shape(self, input_shape):
    return (input_shape[0],)

  def get_config(self):
    return {
      **super().get_config(),
      "width": self.width,
      "depth": self.depth,
      "stop_gradient": self.stop_gradient,
      "kernel_initializer": keras.initializers.serialize(
        keras.initializers.get(self.kernel_initializer)
      ),
    }


@keras.saving.register_keras_serializable(package="keras_unc")
class EmbeddingNormUncertainty(keras.layers.Layer):
  """`1 / ||z||`: a larger embedding norm means more certain (URL `embed-norm`).

  Example:
  >>> EmbeddingNormUncertainty()(np.array([[3.0, 4.0]], "float32"))  # 1 / 5
  """

  def call(self, embedding):
    return 1.0 / ops.maximum(ops.norm(ops.cast(embedding, "float32"), axis=-1), 1e-12)

  def compute_output_shape(self, input_shape):
    return (input_shape[0],)


@keras.saving.register_keras_serializable(package="keras_unc")
class JensenShannonUncertainty(keras.layers.Layer):
  """Jensen–Shannon divergence of the members: `H(mean_m p_m) − mean_m H(p_m)` from
  logits `[B, M, C]` (ensemble members or MC samples; 0 for M = 1). URL `jsd`.

  Example:
  >>> JensenShannonUncertainty()(np.zeros([2, 3, 10], "float32"))  # identical members: 0
  """

  def call(self, logits):
    probs = ops.softmax(ops.cast(logits, "float32"), axis=-1)
    return _entropy(ops.mean(probs, axis=1)) - ops.mean(_entropy(probs), axis=1)

  def compute_output_shape(self, input_shape):
    return (input_shape[0],)


@keras.saving.register_keras_serializable(package="keras_unc")
class UncertaintyRescale(keras.layers.Layer):
  """Multiplies the uncertainty by a fixed scale chosen so its mean starts at `target`.

  The reference measures the mean uncertainty on 10 training batches before training and
  sets `scale = target / mean`. Here the first `init_batches` training calls do that from
  their running mean (the scale is a constant for the gradient); afterwards the scale stays
  fixed. The state is layer state (checkpointed; averaged across replicas). `target = 0`
  disables it (scale 1), as URL's `--unc_start_value=0`.

  The layer also owns the `keras.random.SeedGenerator` of the URL losses' Monte Carlo
  samples, so that checkpoints and resumed runs carry its state.

  Args:
    target: the mean uncertainty to start from (URL `--unc_start_value`); 0 = off.
    init_batches: training batches the mean is measured on.
    seed: int seed of the seed generator.
  """

  def __init__(self, target=0.0, init_batches=10, seed=None, **kwargs):
    super().__init__(**kwargs)
    if target < 0 or int(init_batches) < 1:
      raise ValueError(
        f"UncertaintyRescale needs target >= 0 and init_batches >= 1, got "
        f"target={target}, init_batches={init_batches}."
      )
    self.target, self.init_batches, self.seed = float(target), int(init_batches), seed
    self.seed_generator = keras.random.SeedGenerator(seed)

  def build(self, input_shape):
    # float32 state read as float32 under mixed precision too (autocast would hand `call` a
    # bfloat16 scale to multiply a float32 uncertainty with).
    state = dict(trainable=False, aggregation="mean", dtype="float32", autocast=False)
    self.scale = self.add_weight(shape=(), initializer="ones", name="scale", **state)
    self.seen = self.add_weight(shape=(), initializer="zeros", name="seen", **state)
    self.running_mean = self.add_weight(shape=(), initializer="zeros", name="running_mean", **state)

  def call(self, uncertainty, training=None):
    uncertainty = ops.cast(uncertainty, "float32")
    if training and self.target > 0:
      measuring = self.seen < self.init_batches
      mean = (self.running_mean * self.seen + ops.mean(ops.stop_gradient(uncertainty))) / (
        self.seen + 1.0
      )
      self.running_mean.assign(ops.where(measuring, mean, self.running_mean))
      self.scale.assign(ops.where(measuring, self.target / ops.maximum(mean, 1e-12), self.scale))
      self.seen.assign(ops.where(measuring, self.seen + 1.0, self.seen))
    return uncertainty * ops.stop_gradient(self.scale)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {
      **super().get_config(),
      "target": self.target,
      "init_batches": self.init_batches,
      "seed": self.seed,
    }


@keras.saving.register_keras_serializable(package="keras_unc")
class HetXLWithLogDet(keras.layers.Layer):
  """Runs a `HetXLDense` head and also returns the log-determinant of its embedding-space
  noise covariance `[B]` (URL `hetxl-det`): `(log-predictive [B, C], log_det [B])`.

  Wrapping keeps the head's sub-layers inside one layer, so `.keras` files and the
  SavedModel hold each weight once.

  Args:
    het: a `keras_unc.layers.heteroscedastic.HetXLDense` (or its serialized config).

  Example:
  >>> layer = HetXLWithLogDet(HetXLDense(10, num_factors=2, test_mc_samples=8))
  >>> logits, log_det = layer(np.zeros([2, 16], "float32"))  # [2, 10], [2]
  """

  def __init__(self, het, **kwargs):
    super().__init__(**kwargs)
    self.het = het if isinstance(het, keras.layers.Layer) else keras.layers.deserialize(het)

  def build(self, input_shape):
    if not self.het.built:  # Deserialising the config may already have built it.
      self.het.build(input_shape)

  def call(self, embedding, training=None):
    return self.het(embedding, training=training), self.het.covariance_log_det(embedding)

  def compute_output_shape(self, input_shape):
    return (input_shape[0], self.het.num_classes), (input_shape[0],)

  def get_config(self):
    return {**super().get_config(), "het": keras.layers.serialize(self.het)}
