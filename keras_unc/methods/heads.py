"""Heads: embedding `[M*B, D]` (M members tiled by the backbone) -> logits `[B, M, C]`.

Every head returns `(logits, extras)`; `logits` are such that `softmax(logits)` is each
member's predictive (heteroscedastic heads return the log of their Monte Carlo mean).
"""

from __future__ import annotations

import math

import gin
import keras

from keras_unc import layers
from keras_unc.layers.batch_ensemble import DenseBatchEnsemble, TileMembers
from keras_unc.layers.gaussian_process import MeanFieldLogits, RandomFeatureGaussianProcess
from keras_unc.layers.heteroscedastic import HetXLDense, MCSigmoidDenseFA, MCSoftmaxDenseFA
from keras_unc.layers.mc_dropout import MCDropout
from keras_unc.layers.shallow_ensemble import ShallowEnsembleHead


class Head:
  """Base class: `__call__(embedding, num_classes, members) -> (logits, extras)`."""

  def __call__(
    self, embedding: keras.KerasTensor, num_classes: int, members: int
  ) -> tuple[keras.KerasTensor, dict[str, keras.KerasTensor]]:
    raise NotImplementedError

  def callbacks(self) -> list[keras.callbacks.Callback]:
    return []


class Linear(Head):
  """One linear layer shared by all members (big_vision zero-initialises it).

  `batchnorm=True` puts a BatchNorm without scale and offset before it (`head_bn`), the
  RRL linear probe's feature standardisation.
  """

  def __init__(
    self,
    kernel_initializer: str = "zeros",
    bias_initializer: str = "zeros",
    batchnorm: bool = False,
  ):
    self.kernel_initializer = kernel_initializer
    self.bias_initializer = bias_initializer
    self.batchnorm = batchnorm

  def __call__(self, embedding, num_classes, members):
    x = embedding
    if self.batchnorm:
      x = keras.layers.BatchNormalization(
        center=False, scale=False, name="head_bn", dtype="float32"
      )(x)
    x = keras.layers.Dense(
      num_classes,
      kernel_initializer=self.kernel_initializer,
      bias_initializer=self.bias_initializer,
      name="head",
      dtype="float32",
    )(x)
    return layers.MemberAxis(members, name="logits", dtype="float32")(x), {}


class BatchEnsembleLinear(Head):
  """A `DenseBatchEnsemble` output layer: each member has its own rank-1 head."""

  def __init__(self, fast_weight_init: str = "normal", fast_weight_stddev: float = 0.5):
    self.fast = dict(
      alpha_initializer=fast_weight_init,
      gamma_initializer=fast_weight_init,
      fast_weight_stddev=fast_weight_stddev,
    )

  def __call__(self, embedding, num_classes, members):
    x = DenseBatchEnsemble(num_classes, members, name="head", dtype="float32", **self.fast)(
      embedding
    )
    return layers.MemberAxis(members, name="logits", dtype="float32")(x), {}


@gin.configurable("shallow_ensemble_head")
class ShallowEnsemble(Head):
  """M independent linear heads on one shared embedding.

  Args:
    num_heads: M (URL's `--num-heads` default: 10).
  """

  def __init__(self, num_heads: int = 10):
    if int(num_heads) < 1:
      raise ValueError(f"num_heads must be >= 1, got {num_heads}.")
    self.num_heads = int(num_heads)

  def __call__(self, embedding, num_classes, members):
    if members != 1:
      raise ValueError("A shallow ensemble sits on an untiled backbone (members=1).")
    logits = ShallowEnsembleHead(num_classes, self.num_heads, name="head", dtype="float32")(
      embedding
    )
    return keras.layers.Identity(name="logits", dtype="float32")(logits), {}


@gin.configurable("mc_dropout_head")
class MCDropoutHead(Head):
  """Dropout kept on at inference before a linear layer; S samples at test, 1 in training.

  Args:
    rate: dropout rate.
    num_samples: S forward samples at inference.
  """

  def __init__(self, rate: float = 0.1, num_samples: int = 10):
    if int(num_samples) < 1:
      raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    self.rate, self.num_samples = rate, int(num_samples)

  def __call__(self, embedding, num_classes, members):
    if members != 1:
      raise ValueError("MC dropout samples are tiled by the head; use an untiled backbone.")
    s = self.num_samples
    x = TileMembers(s, train_members=1, name="mc_tile")(embedding)
    x = MCDropout(self.rate, name="mc_dropout")(x)
    x = keras.layers.Dense(num_classes, name="head", dtype="float32")(x)
    return layers.MemberAxis(s, train_members=1, name="logits", dtype="float32")(x), {}


class _Resets(keras.callbacks.Callback):
  """Resets GP precision matrices whenever training crosses a multiple of `every` steps
  (the start of each data epoch); a resumed run resets where the uninterrupted one did.
  """

  def __init__(self, gp_layers, every):
    super().__init__()
    self.gp_layers, self.every, self._last = gp_layers, every, None

  def on_train_batch_begin(self, batch, logs=None):
    step = int(self.model.optimizer.iterations.numpy())
    if self._last is None:  # Fresh run: reset at 0; resumed at s: as if reset at s - 1.
      self._last = (step - 1) // self.every if step else -1
    if step // self.every > self._last:
      self._last = step // self.every
      for layer in self.gp_layers:
        layer.reset_covariance()


@gin.configurable("gp_head")
class GaussianProcess(Head):
  """Random-feature GP output layer with a Laplace covariance; mean-field logits.

  Shared by `sngp`, `hetsngp` and `be_sngp` (gin: `gp_head`). The defaults are those of
  ub's SNGP ResNets (`resnet50_sngp.py`, `wide_resnet_sngp.py` with ub's flag defaults):
  no input LayerNorm, `gp_scale = 1` (length-scale 20, see
  `layers.gaussian_process.ub_length_scale`), orthogonal random features without the
  `sqrt(2/D)` factor, Glorot-initialised output weights, exact precision, ridge 1. The
  mean-field factor is the paper's π/8; ub's scripts set 20 (CIFAR) or 1 (ImageNet), which
  their recipes here do.

  Args:
    num_inducing: random features D_L.
    normalize_input: LayerNorm on the embedding before the random features.
    kernel_scale: the RBF length-scale ℓ (random kernel standard deviation 1/ℓ).
    gp_cov_momentum: -1 for the exact Laplace precision, else its moving-average momentum.
    gp_cov_ridge_penalty: ridge added to the precision.
    mean_field_factor: lambda of the mean-field logits `logits / sqrt(1 + lambda var)`.
    l2_reg: L2 penalty of the output weights.
    reset_every: steps between precision resets (one data epoch; None: never).
    scale_random_features: multiply the random features by sqrt(2 / D_L).
    random_features: "orf" (orthogonal) or "gaussian" (ub's 'orf' / 'rff').
    output_initializer: initializer of the output weights (ub ImageNet:
      `RandomNormal(stddev=0.01)`, gin `@keras.initializers.RandomNormal()`).
  """

  def __init__(
    self,
    num_inducing: int = 1024,
    normalize_input: bool = False,
    kernel_scale: float = 20.0,
    gp_cov_momentum: float = -1.0,
    gp_cov_ridge_penalty: float = 1.0,
    mean_field_factor: float = math.pi / 8,
    l2_reg: float = 0.0,
    reset_every: int | None = None,
    scale_random_features: bool = False,
    random_features: str = "orf",
    output_initializer: str | keras.initializers.Initializer = "glorot_uniform",
  ):
    self.gp_args = dict(
      num_inducing=num_inducing,
      normalize_input=normalize_input,
      scale_random_features=scale_random_features,
      kernel_scale=kernel_scale,
      random_features=random_features,
      gp_cov_momentum=gp_cov_momentum,
      gp_cov_ridge_penalty=gp_cov_ridge_penalty,
      output_initializer=output_initializer,
      kernel_regularizer=keras.regularizers.L2(l2_reg) if l2_reg else None,
    )
    self.mean_field_factor = mean_field_factor
    self.reset_every = reset_every
    self.built_layers = []

  def gp_outputs(self, embedding, num_classes):
    """The GP layer's `(logits, variance)` before the mean-field adjustment."""
    gp = RandomFeatureGaussianProcess(num_classes, name="gp", dtype="float32", **self.gp_args)
    self.built_layers.append(gp)
    return gp(embedding)

  def gp_logits(self, embedding, num_classes):
    logits, variance = self.gp_outputs(embedding, num_classes)
    mean_field = MeanFieldLogits(self.mean_field_factor, name="mean_field", dtype="float32")
    return mean_field((logits, variance)), variance

  def __call__(self, embedding, num_classes, members):
    logits, variance = self.gp_logits(embedding, num_classes)
    extras = {"gp_variance": keras.layers.Identity(name="gp_variance", dtype="float32")(variance)}
    logits = layers.MemberAxis(members, name="logits", dtype="float32")(logits)
    return logits, extras if members == 1 else {}

  def callbacks(self):
    return [_Resets(self.built_layers, self.reset_every)] if self.reset_every else []


@gin.configurable("het_head")
class Heteroscedastic(Head):
  """Low-rank + diagonal Gaussian noise on the logits, Monte Carlo softmax (or sigmoid).

  Shared by `heteroscedastic`, `hetxl`, `plex` and `hetsngp` (gin: `het_head`).

  Args:
    num_factors: rank of the low-rank part of the noise covariance (< classes).
    temperature: softmax temperature of the Monte Carlo predictive.
    train_mc_samples, test_mc_samples: Monte Carlo samples in training / at inference.
    multilabel: `MCSigmoidDenseFA` (sigmoid likelihood) instead of `MCSoftmaxDenseFA`.
    xl: HET-XL (`HetXLDense`): the noise covariance lives in the D-dim embedding space.
    share_samples_across_batch: one set of noise draws for the whole batch (ub's HetSNGP
      and HET-XL runs set it).
    min_scale: floor added to the diagonal noise scale (edward2: 1e-3).
    test_share_samples: one set of noise draws per batch at inference only (evaluation and
      the SavedModel), training unchanged. Each example's estimate keeps its distribution;
      the draws cost S instead of B x S. For serving, set it with a smaller
      `test_mc_samples` (README "Serving"; `benchmarks/serving.py` measures both).
  """

  def __init__(
    self,
    num_factors: int = 10,
    temperature: float = 1.0,
    train_mc_samples: int = 1000,
    test_mc_samples: int = 1000,
    multilabel: bool = False,
    xl: bool = False,
    share_samples_across_batch: bool = False,
    min_scale: float = 1e-3,
    test_share_samples: bool = False,
  ):
    if temperature <= 0:
      raise ValueError(f"temperature must be > 0, got {temperature}.")
    self.args = dict(
      num_factors=num_factors,
      temperature=temperature,
      train_mc_samples=train_mc_samples,
      test_mc_samples=test_mc_samples,
      share_samples_across_batch=share_samples_across_batch,
      min_scale=min_scale,
      test_share_samples=test_share_samples,
    )
    self.multilabel, self.xl = multilabel, xl

  def het_layer(self, num_classes, **overrides):
    """The layer; `overrides` are extra layer arguments (HetSNGP's variance weights)."""
    args = {**self.args, **overrides}
    if self.xl:
      return HetXLDense(num_classes, name="het", dtype="float32", **args)
    if self.args["num_factors"] >= num_classes:
      raise ValueError(
        f"num_factors={self.args['num_factors']} must be smaller than the "
        f"number of classes ({num_classes}); uncertainty-baselines uses e.g. 15 "
        "for 1000 ImageNet classes, and at most C - 1."
      )
    cls = MCSigmoidDenseFA if self.multilabel else MCSoftmaxDenseFA
    return cls(num_classes, name="het", dtype="float32", **args)

  def __call__(self, embedding, num_classes, members):
    x = self.het_layer(num_classes)(embedding)
    return layers.MemberAxis(members, name="logits", dtype="float32")(x), {}


HETGP_INFERENCE = ("edward2", "mean_field")


class HetGP(Head):
  """HetSNGP: the GP's logits as the location of heteroscedastic noise.

  `inference="edward2"` (default) is edward2's `HeteroscedasticSNGPLayer`, which ub's
  HetSNGP models use: the location is the GP's raw logits, and at test time the GP
  predictive variance v(x) joins the diagonal noise, `d ← sqrt(het_var_weight · d² +
  sngp_var_weight · v)`; no mean-field factor. `"mean_field"` (this package's earlier
  form, kept as an option) uses the mean-field logits as the location and never adds v.

  Args:
    gp, het: the parts (`gp_head`, `het_head`).
    inference: one of `HETGP_INFERENCE`.
    sngp_var_weight, het_var_weight: the weights of the two variances (edward2: 1, 1).
  """

  def __init__(
    self,
    gp: GaussianProcess,
    het: Heteroscedastic,
    inference: str = "edward2",
    sngp_var_weight: float = 1.0,
    het_var_weight: float = 1.0,
  ):
    if inference not in HETGP_INFERENCE:
      raise ValueError(f"Unknown HetSNGP inference {inference!r}: choose one of {HETGP_INFERENCE}.")
    if het.xl or het.multilabel:
      raise ValueError("HetSNGP's noise is on the logits: use het_head with xl=False.")
    self.gp, self.het, self.inference = gp, het, inference
    self.weights = dict(loc_var_weight=sngp_var_weight, het_var_weight=het_var_weight)

  def __call__(self, embedding, num_classes, members):
    if self.inference == "mean_field":
      loc, _ = self.gp.gp_logits(embedding, num_classes)
      x = self.het.het_layer(num_classes)(embedding, loc=loc)
    else:
      loc, variance = self.gp.gp_outputs(embedding, num_classes)
      het = self.het.het_layer(num_classes, **self.weights)
      x = het(embedding, loc=loc, loc_variance=variance)
    return layers.MemberAxis(members, name="logits", dtype="float32")(x), {}

  def callbacks(self):
    return self.gp.callbacks()
