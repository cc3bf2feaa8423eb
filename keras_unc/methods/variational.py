"""`variational`: mean-field variational inference over every weight kernel, with Flipout.

Every backbone Dense/Conv2D and the output layer hold a Gaussian posterior
`q(W) = N(W_mean, softplus(ρ)²)` per kernel entry (`layers.bayesian.DenseFlipout` /
`Conv2DFlipout`), sampled with Flipout on every call. The training loss is the per-example
negative ELBO: the cross-entropy of one sample plus `KL(q || N(0, prior_stddev²)) /
dataset_size` (the layers add it with `add_loss`; the trainer adds `network.losses`). At
inference the batch is tiled S times before the stem (one pass): logits `[B, S, C]`, the
predictive their mean.

Reference: Blundell et al., "Weight Uncertainty in Neural Networks", ICML 2015; Wen et al.,
"Flipout", ICLR 2018; uncertainty-baselines `baselines/cifar/variational_inference.py`,
`models/wide_resnet_variational.py`.
"""

from __future__ import annotations

import gin

from keras_unc import layers
from keras_unc.layers.bayesian import Conv2DFlipout, DenseFlipout
from keras_unc.methods.base import Method
from keras_unc.methods.heads import Head
from keras_unc.methods.modifiers import Modifier
from keras_unc.methods.rank1 import check_annealing, check_count, kl_weight_for
from keras_unc.methods.registry import register


class FlipoutModifier(Modifier):
  """Flipout Dense/Conv2D layers everywhere; the images tiled S times before the stem at
  inference (one sample in training).
  """

  def __init__(self, num_eval_samples: int, **layer_kwargs):
    self.members, self.train_members = num_eval_samples, 1
    self.layer_kwargs = layer_kwargs

  def wrap_dense(self, factory):
    def dense(units, *, name, block=None, **kwargs):
      del block
      return DenseFlipout(units, name=name, **self.layer_kwargs, **kwargs)

    return dense

  def wrap_conv(self, factory):
    def conv(filters, kernel_size, *, name, block=None, **kwargs):
      del block
      return Conv2DFlipout(filters, kernel_size, name=name, **self.layer_kwargs, **kwargs)

    return conv

  def backbone_kwargs(self):
    return {"tile_members": self.members, "tile_train_members": 1}


class FlipoutLinear(Head):
  """A `DenseFlipout` output layer; logits `[B, S, C]` (`[B, 1, C]` in training)."""

  def __init__(self, **layer_kwargs):
    self.layer_kwargs = layer_kwargs

  def __call__(self, embedding, num_classes, members):
    x = DenseFlipout(num_classes, name="head", dtype="float32", **self.layer_kwargs)(embedding)
    return layers.MemberAxis(members, train_members=1, name="logits", dtype="float32")(x), {}


@register("variational")
@gin.configurable
class Variational(Method):
  """Mean-field Gaussian posterior over every kernel (Flipout), trained on the ELBO.

  Args:
    num_eval_samples: S weight samples averaged at inference (ub CIFAR: 5); 1 in training.
    prior_stddev: stddev of the N(0, prior_stddev²) prior (ub: 0.1).
    stddev_init: initial posterior stddev (ub: 1e-3); the posterior means start at the
      backbone's kernel initialisers (He / Glorot, as ub's `TrainableHeNormal`).
    dataset_size: number of training examples; the KL is divided by it (required).
    tied_mean: ub's `NormalKLDivergenceWithTiedMean` (prior mean = posterior mean, so only
      the stddev is regularised) instead of the N(0, prior_stddev²) prior.
    kl_annealing: the KL term's weight rises linearly from 0 to 1 over this fraction of
      `train.total_steps` (ub: 200 of 250 epochs, 0.8; 0 = the full KL from the start).
    uncertainty, label_smoothing: as `Method`.

  Deviations from ub's `variational_inference.py`: the KL warm-up is a fraction of the
  steps (ub: a number of epochs); the default prior is the zero-mean N(0, prior_stddev²) (ub's tied mean
  is `tied_mean=True`); biases and BatchNorm are point estimates as in ub; the S test
  samples come from one pass over a batch tiled S times (ub: S forward passes), with
  Flipout's per-example signs and one ΔW draw per layer call shared by the S copies.
  """

  def __init__(
    self,
    num_eval_samples: int = 4,
    prior_stddev: float = 0.1,
    stddev_init: float = 1e-3,
    dataset_size: int | None = None,
    tied_mean: bool = False,
    kl_annealing: float = 0.8,
    uncertainty: str = "msp",
    label_smoothing: float = 0.0,
  ):
    s = check_count(num_eval_samples, "Variational.num_eval_samples", "4")
    annealing = check_annealing(kl_annealing, "Variational")
    kwargs = dict(
      kl_weight=kl_weight_for(dataset_size, "Variational"),
      prior_stddev=prior_stddev,
      stddev_init=stddev_init,
      tied_mean=tied_mean,
    )
    DenseFlipout(1, **kwargs)  # Checks the layer arguments now, with a clear error.
    super().__init__(
      FlipoutLinear(**kwargs),
      [FlipoutModifier(s, **kwargs)],
      loss="member_ce",
      uncertainty=uncertainty,
      label_smoothing=label_smoothing,
    )
    self.kl_annealing = annealing

  def build_head(self, embedding, num_classes):
    logits, extras = self.head(embedding, num_classes, self.members)
    probs = layers.Predictive("softmax", name="probs", dtype="float32")(logits)
    score = layers.UncertaintyScore(self.uncertainty, name="uncertainty", dtype="float32")
    mean = layers.MemberMean(self.members, train_members=1, name="embedding", dtype="float32")
    return {
      "logits": logits,
      "probs": probs,
      "uncertainty": score(probs),
      "embedding": mean(embedding),
      **extras,
    }
