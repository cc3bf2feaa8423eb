"""`mc_dropout`: dropout kept on at inference, S forward samples averaged.

Two placements: `"last_layer"`, one dropout layer before the output layer (the input
batch is tiled S times after the backbone: cheap, the backbone runs once), and
`"backbone"`, dropout in every residual block of a ResNet / Wide ResNet (uncertainty-baselines'
`resnet50_dropout` / `wide_resnet_dropout`) or in every MLP block of a ViT; the images are
tiled S times before the stem, so the whole network is sampled.

Reference: Gal & Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016.
"""

import gin
import keras

from keras_unc import layers
from keras_unc.methods import heads, modifiers
from keras_unc.methods.base import Method
from keras_unc.methods.registry import register

PLACEMENTS = ("last_layer", "backbone")


@register("mc_dropout")
@gin.configurable
class MCDropout(Method):
  """Dropout active at inference; the predictive averages S samples (1 in training).

  Args:
    rate: dropout rate.
    num_samples: S forward samples at inference (1 in training).
    placement: `"last_layer"` (default): one dropout layer on the embedding before the
      output layer (`heads.MCDropoutHead`). `"backbone"`: uncertainty-baselines' ImageNet /
      CIFAR MC dropout: always-on dropout after the ReLUs of every residual block of the
      `resnet` / `wide_resnet` backbone (`modifiers.MCDropoutBackbone`), the images tiled S
      times before the stem, BatchNorm with its moving statistics at inference, and a plain
      linear output layer (initialised N(0, 0.01²) as ub's `fc1000`). On a `vit` both
      dropouts of every encoder block's MLP are always on (ub has no ViT MC dropout model:
      this is the same recipe on the ViT's own dropout sites; LayerNorm has no batch state).
    filterwise: with `placement="backbone"`, drop whole channels (ub `filterwise_dropout`).
    uncertainty, label_smoothing, loss: as `Method` (e.g. "logitnorm", "focal").
  """

  def __init__(
    self,
    rate: float = 0.1,
    num_samples: int = 10,
    placement: str = "last_layer",
    filterwise: bool = False,
    uncertainty: str = "msp",
    label_smoothing: float = 0.0,
    loss: str = "member_ce",
  ):
    if placement not in PLACEMENTS:
      raise ValueError(
        f"Unknown MC dropout placement {placement!r}: choose one of {PLACEMENTS} "
        "('backbone' needs a resnet, wide_resnet or vit backbone)."
      )
    if filterwise and placement != "backbone":
      raise ValueError(
        "filterwise=True drops channels of the backbone's feature maps: it needs "
        "placement='backbone' (the last-layer dropout acts on a [B, D] embedding)."
      )
    self.placement = placement
    if placement == "backbone":
      modifier = modifiers.MCDropoutBackbone(rate, num_samples, filterwise)
      super().__init__(
        heads.Linear(kernel_initializer=keras.initializers.RandomNormal(stddev=0.01)),
        [modifier],
        loss=loss,
        uncertainty=uncertainty,
        label_smoothing=label_smoothing,
      )
    else:
      super().__init__(
        heads.MCDropoutHead(rate, num_samples),
        loss=loss,
        uncertainty=uncertainty,
        label_smoothing=label_smoothing,
      )

  def build_head(self, embedding, num_classes):
    if self.placement != "backbone":
      return super().build_head(embedding, num_classes)
    # The backbone output is [S*B, D] at inference, [B, D] in training (one sample).
    s = self.members
    x = keras.layers.Dense(
      num_classes,
      kernel_initializer=self.head.kernel_initializer,
      bias_initializer=self.head.bias_initializer,
      name="head",
      dtype="float32",
    )(embedding)
    logits = layers.MemberAxis(s, train_members=1, name="logits", dtype="float32")(x)
    kind = "sigmoid" if self.loss_name == "sigmoid" else "softmax"
    probs = layers.Predictive(kind, name="probs", dtype="float32")(logits)
    score = layers.UncertaintyScore(self.uncertainty, name="uncertainty", dtype="float32")
    mean = layers.MemberMean(s, train_members=1, name="embedding", dtype="float32")
    return {
      "logits": logits,
      "probs": probs,
      "uncertainty": score(probs),
      "embedding": mean(embedding),
    }
