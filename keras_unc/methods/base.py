"""What a method is: the pieces that differ between uncertainty methods, nothing else.

The trainer, data, evaluators and export are shared. A method is a composition of
backbone *modifiers* (BatchEnsemble layers, spectral normalisation: they wrap the
backbone's layer factories), one *head* (embedding -> member logits `[B, M, C]`), a loss
and an uncertainty score. Hybrids (Plex, HetSNGP, BE-SNGP) are new compositions of the
same pieces, never new code paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import keras

from keras_unc import layers
from keras_unc.backbones.factories import default_conv, default_dense
from keras_unc.methods import losses

if TYPE_CHECKING:
  from keras_unc.methods.heads import Head
  from keras_unc.methods.modifiers import Modifier

LOSSES = {
  "member_ce": losses.member_cross_entropy,  # Each member trained on its own CE.
  "ensemble_nll": lambda y, logits, _smoothing: losses.ensemble_nll(y, logits),
  "sigmoid": lambda y, logits, _smoothing: losses.sigmoid_cross_entropy(y, logits),
  # Objectives any method can train with (hyperparameters: gin `logitnorm_loss.temperature`,
  # `focal_loss.gamma`, `outlier_exposure_loss.weight`; OE data: `outlier_exposure_data`).
  "logitnorm": losses.logitnorm_loss,
  "focal": losses.focal_loss,
  "outlier_exposure": losses.outlier_exposure_loss,
}


def float32_embedding(embedding: keras.KerasTensor, members: int) -> keras.KerasTensor:
  """The `embedding` output `[B, D]`: the member mean for M > 1, float32 whatever the dtype
  policy (every output of the network is float32, the Keras convention for model outputs).
  """
  if members > 1:
    return layers.MemberMean(members, name="embedding", dtype="float32")(embedding)
  if embedding.dtype == "float32":
    return embedding  # (float32 networks keep their layers as they were.)
  return keras.layers.Identity(name="embedding_float32", dtype="float32")(embedding)


class Method:
  """A composition of backbone modifiers, a head, a loss and an uncertainty score.

  Args:
    head: a `keras_unc.methods.heads.Head`.
    modifiers: backbone modifiers (`keras_unc.methods.modifiers`), applied in order: a
      later modifier wraps the layers an earlier one builds.
    loss: one of `LOSSES`.
    uncertainty: "msp" or "entropy" of the predictive.
    label_smoothing: smoothing of integer labels in the softmax losses.
  """

  name = "base"

  def __init__(
    self,
    head: Head,
    modifiers: Sequence[Modifier] = (),
    loss: str = "member_ce",
    uncertainty: str = "msp",
    label_smoothing: float = 0.0,
  ):
    if loss not in LOSSES:
      raise ValueError(f"Unknown loss {loss!r}: choose one of {sorted(LOSSES)}.")
    if loss == "logitnorm" and getattr(head, "kernel_initializer", None) == "zeros":
      # f / (tau (|f| + 1e-7)) has a gradient of ~1 / (tau 1e-7) at f = 0: the first step's
      # gradient fills Adam's second moment with ~1e16 and the head then barely moves for
      # thousands of steps (Fashion-MNIST benchmark: accuracy 0.59 against 0.78 with a
      # random head). The reference trains a randomly initialised PyTorch Linear.
      raise ValueError(
        "loss='logitnorm' with a zero-initialised head: LogitNorm divides the logits by "
        "their norm, which is 0 at a zero head, so the first gradient is ~1e8 and Adam "
        "freezes the head. Give the head a random init, e.g. "
        "Deterministic.head_init = 'glorot_uniform' (the reference's Linear is random)."
      )
    if uncertainty not in layers.outputs.UNCERTAINTY_SCORES:
      raise ValueError(
        f"Unknown uncertainty score {uncertainty!r}: choose one of "
        f"{layers.outputs.UNCERTAINTY_SCORES}."
      )
    self.head = head
    self.modifiers = tuple(modifiers)
    self.loss_name = loss
    self.uncertainty = uncertainty
    self.label_smoothing = label_smoothing

  # Fraction of train.total_steps over which the trainer warms the layers' losses (the
  # ELBO's KL of the Bayesian methods) up linearly from 0 to 1, as uncertainty-baselines'
  # `kl_annealing_epochs` (Bowman et al. 2016); 0 = off. `TrainModel.layer_loss_scale`.
  kl_annealing = 0.0

  @property
  def members(self) -> int:
    """Ensemble size M of the backbone output (1 unless a modifier tiles the batch)."""
    m = 1
    for modifier in self.modifiers:
      m *= getattr(modifier, "members", 1)
    return m

  # Multiple of the per-replica batch a method needs (e.g. paired losses need 2).
  batch_multiple = 1

  def backbone_input(self, images: keras.KerasTensor) -> keras.KerasTensor:
    """The backbone's input from the adapted images `[B, H, W, C]`; the backbone is built
    for its channel count. Default: the images (MIMO stacks M images on the channels).
    """
    return images

  def backbone_overrides(self) -> dict[str, Any]:
    """Keyword arguments for the backbone: wrapped layer factories and batch tiling."""
    dense, conv, extra = default_dense, default_conv, {}
    for modifier in self.modifiers:
      dense, conv = modifier.wrap_dense(dense), modifier.wrap_conv(conv)
      extra.update(modifier.backbone_kwargs())
    if dense is not default_dense:
      extra["dense_factory"] = dense
    if conv is not default_conv:
      extra["conv_factory"] = conv
    return extra

  def build_head(self, embedding: keras.KerasTensor, num_classes: int) -> dict[str, Any]:
    """Maps the backbone output `[M*B, D]` to the output dict (`logits [B, M, C]`,
    `probs [B, C]`, `uncertainty [B]`, `embedding [B, D]`, plus head extras).
    """
    logits, extras = self.head(embedding, num_classes, self.members)
    kind = "sigmoid" if self.loss_name == "sigmoid" else "softmax"
    probs = layers.Predictive(kind, name="probs", dtype="float32")(logits)
    score = layers.UncertaintyScore(self.uncertainty, name="uncertainty", dtype="float32")
    return {
      "logits": logits,
      "probs": probs,
      "uncertainty": score(probs),
      "embedding": float32_embedding(embedding, self.members),
      **extras,
    }

  def loss(self, labels, outputs: dict[str, Any]):
    """Per-example training loss `[B]` from labels (int `[B]` or soft `[B, C]`) and outputs."""
    return LOSSES[self.loss_name](labels, outputs["logits"], self.label_smoothing)

  def train_loss(self, images, labels, outputs):
    """Per-example loss of the train step, which also sees the images (a distillation
    teacher runs on them: `keras_unc.transfer.distill`); by default `loss`.
    """
    del images
    return self.loss(labels, outputs)

  def attach(self, network: keras.Model) -> None:
    """Called once with the built network, in the strategy scope, before training: build
    what the method needs besides the network (e.g. a frozen teacher; not exported).
    """

  def callbacks(self) -> list[keras.callbacks.Callback]:
    """Extra Keras callbacks, e.g. resetting a GP precision matrix every epoch."""
    return list(self.head.callbacks())

  def describe(self) -> str:
    """One line for logs: the composition."""
    parts = [type(m).__name__ for m in self.modifiers] + [type(self.head).__name__]
    return f"{self.name}: " + " + ".join(parts) + f", loss={self.loss_name}"
