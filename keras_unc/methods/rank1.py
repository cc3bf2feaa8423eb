"""`rank1`: rank-1 Bayesian neural network, M mixture components, one forward pass.

Every backbone Dense/Conv2D and the output layer share one weight matrix W; member i has
Normal posteriors over rank-1 factors r (input side) and s (output side), sampled per
example, `y = ((x ∘ r) W) ∘ s + b_i` (`layers.bayesian.DenseRank1` / `Conv2DRank1`). The
training loss is the per-example negative ELBO: each member's cross-entropy on the batch
tiled M times, plus `KL(q || N(1, prior_stddev²)) / dataset_size` (the layers add it with
`add_loss`; the trainer adds `network.losses`). At inference each member draws S samples
per example (the batch is tiled M·S times): logits `[B, M·S, C]`, predictive their mean.

Reference: Dusenberry et al., "Efficient and Scalable Bayesian Neural Nets with Rank-1
Factors", ICML 2020; uncertainty-baselines `baselines/cifar/rank1_bnn.py`,
`models/wide_resnet_rank1.py`.
"""

from __future__ import annotations

import gin

from keras_unc import layers
from keras_unc.layers.bayesian import RANK1_STDDEV_INIT, Conv2DRank1, DenseRank1
from keras_unc.methods.base import Method
from keras_unc.methods.heads import Head
from keras_unc.methods.modifiers import Modifier
from keras_unc.methods.registry import register


def check_count(value, name, example):
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be an int >= 1, got {value!r}; e.g. {example}.")
  return value


def kl_weight_for(dataset_size, method):
  """`1 / dataset_size`, with a clear error when the training-set size is not set."""
  if dataset_size is None:
    raise ValueError(
      f"{method}.dataset_size is not set: give the number of training examples (the KL "
      f"term of the ELBO is divided by it), e.g. gin `{method}.dataset_size = 50000`."
    )
  if isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 1:
    raise ValueError(
      f"{method}.dataset_size must be the number of training examples, an int >= 1, got "
      f"{dataset_size!r}."
    )
  return 1.0 / dataset_size


def check_annealing(value, method):
  """`kl_annealing` as a float in [0, 1], with a clear error otherwise."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
    raise ValueError(
      f"{method}.kl_annealing={value!r} must be a fraction of train.total_steps in [0, 1] "
      "(0 = no warm-up; uncertainty-baselines: 200 of 250 epochs = 0.8)."
    )
  return float(value)


class Rank1Modifier(Modifier):
  """Rank-1 Bayesian Dense/Conv2D layers everywhere; the images tiled M·S times before the
  stem (M in training).
  """

  def __init__(self, ensemble_size: int, num_eval_samples: int, **layer_kwargs):
    self.ensemble_size, self.num_eval_samples = ensemble_size, num_eval_samples
    self.members = ensemble_size * num_eval_samples
    self.train_members = ensemble_size
    self.layer_kwargs = layer_kwargs

  def wrap_dense(self, factory):
    def dense(units, *, name, block=None, **kwargs):
      del block
      return DenseRank1(units, self.ensemble_size, name=name, **self.layer_kwargs, **kwargs)

    return dense

  def wrap_conv(self, factory):
    def conv(filters, kernel_size, *, name, block=None, **kwargs):
      del block
      return Conv2DRank1(
        filters, kernel_size, self.ensemble_size, name=name, **self.layer_kwargs, **kwargs
      )

    return conv

  def backbone_kwargs(self):
    return {"tile_members": self.members, "tile_train_members": self.train_members}


class Rank1Linear(Head):
  """A `DenseRank1` output layer; logits `[B, M·S, C]` (`[B, M, C]` in training)."""

  def __init__(self, ensemble_size: int, num_eval_samples: int, **layer_kwargs):
    self.ensemble_size, self.num_eval_samples = ensemble_size, num_eval_samples
    self.layer_kwargs = layer_kwargs

  def __call__(self, embedding, num_classes, members):
    x = DenseRank1(
      num_classes, self.ensemble_size, name="head", dtype="float32", **self.layer_kwargs
    )(embedding)
    logits = layers.MemberAxis(
      members, train_members=self.ensemble_size, name="logits", dtype="float32"
    )(x)
    return logits, {}


@register("rank1")
@gin.configurable
class Rank1(Method):
  """Rank-1 BNN backbone and head (every Dense/Conv2D layer), trained on the ELBO.

  Args:
    ensemble_size: M mixture components (ub CIFAR / ImageNet: 4).
    num_eval_samples: S samples per member at inference (ub: 1); the batch is tiled M·S
      times, logits `[B, M·S, C]`.
    prior_stddev: stddev of the N(1, prior_stddev²) prior of the factors (ub: 0.1).
    dataset_size: number of training examples; the KL is divided by it (required).
    random_sign_init: factor posterior-mean init: > 0 random signs with P(+1) = value
      (ub CIFAR: 0.5), < 0 N(1, value²) (ub ImageNet: -0.5).
    stddev_init: initial posterior stddev of the factors (ub: sqrt(1e-3 / (1 − 1e-3))).
    kl_annealing: the KL term's weight rises linearly from 0 to 1 over this fraction of
      `train.total_steps` (ub: `min(1, (step + 1) / (200 epochs))` of 250 epochs: 0.8;
      0 = the full KL from the first step).
    loss: as `Method` ("member_ce": each member's cross-entropy, as ub).
    uncertainty, label_smoothing: as `Method`.

  Deviations from ub's `rank1_bnn.py`: the KL warm-up is a fraction of the steps (ub: a
  number of epochs), and S samples per member come from one pass over a batch tiled M·S
  times (ub: S forward passes). BatchNorm is shared by the
  members (ub's `use_ensemble_bn` default False).

  The mixture member logits are averaged in probability space by the shared `Predictive`.
  """

  def __init__(
    self,
    ensemble_size: int = 4,
    num_eval_samples: int = 1,
    prior_stddev: float = 0.1,
    dataset_size: int | None = None,
    random_sign_init: float = 0.5,
    stddev_init: float = RANK1_STDDEV_INIT,
    kl_annealing: float = 0.8,
    loss: str = "member_ce",
    uncertainty: str = "msp",
    label_smoothing: float = 0.0,
  ):
    m = check_count(ensemble_size, "Rank1.ensemble_size", "4")
    s = check_count(num_eval_samples, "Rank1.num_eval_samples", "1")
    kwargs = dict(
      kl_weight=kl_weight_for(dataset_size, "Rank1"),
      prior_stddev=prior_stddev,
      random_sign_init=random_sign_init,
      stddev_init=stddev_init,
    )
    DenseRank1(1, m, **kwargs)  # Checks the layer arguments now, with a clear error.
    self.ensemble_size, self.num_eval_samples = m, s
    annealing = check_annealing(kl_annealing, "Rank1")
    super().__init__(
      Rank1Linear(m, s, **kwargs),
      [Rank1Modifier(m, s, **kwargs)],
      loss=loss,
      uncertainty=uncertainty,
      label_smoothing=label_smoothing,
    )
    self.kl_annealing = annealing

  def build_head(self, embedding, num_classes):
    logits, extras = self.head(embedding, num_classes, self.members)
    kind = "sigmoid" if self.loss_name == "sigmoid" else "softmax"
    probs = layers.Predictive(kind, name="probs", dtype="float32")(logits)
    score = layers.UncertaintyScore(self.uncertainty, name="uncertainty", dtype="float32")
    mean = layers.MemberMean(
      self.members, train_members=self.ensemble_size, name="embedding", dtype="float32"
    )
    return {
      "logits": logits,
      "probs": probs,
      "uncertainty": score(probs),
      "embedding": mean(embedding),
      **extras,
    }
