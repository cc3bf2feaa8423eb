"""The deterministic baseline: one linear head, uncertainty from the softmax."""

import gin

from keras_unc.methods import heads
from keras_unc.methods.base import Method
from keras_unc.methods.registry import register


@register("deterministic")
@gin.configurable
class Deterministic(Method):
  """Linear softmax classifier on the backbone embedding.

  Args:
    uncertainty: "msp" (1 − max p, default) or "entropy" of the predictive.
    label_smoothing: smoothing applied to integer labels in the loss.
    head_init: kernel initialiser of the head; big_vision zero-initialises it.
    loss: "member_ce" (softmax cross-entropy) or "sigmoid" (multi-label).
    head_bias_init: bias initialiser of the head (two-stage: `@member_head_bias()`).
    head_batchnorm: BatchNorm (no scale, no offset) before the head, as RRL's linear probe.
  """

  def __init__(
    self,
    uncertainty="msp",
    label_smoothing=0.0,
    head_init="zeros",
    loss="member_ce",
    head_bias_init="zeros",
    head_batchnorm=False,
  ):
    super().__init__(
      heads.Linear(head_init, head_bias_init, head_batchnorm),
      loss=loss,
      uncertainty=uncertainty,
      label_smoothing=label_smoothing,
    )
