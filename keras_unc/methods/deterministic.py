"""The deterministic baseline: one linear head, uncertainty from the softmax."""

import gin
import keras

from keras_unc import layers, losses
from keras_unc.methods.base import Method


@gin.configurable
class Deterministic(Method):
  """Linear softmax classifier on the backbone embedding.

  Args:
    uncertainty: "msp" (1 − max p, default) or "entropy" of the predictive.
    label_smoothing: smoothing applied to integer labels in the loss.
    head_init: kernel initialiser of the head; big_vision zero-initialises it.
  """

  name = "deterministic"

  def __init__(self, uncertainty="msp", label_smoothing=0.0, head_init="zeros"):
    self.uncertainty = uncertainty
    self.label_smoothing = label_smoothing
    self.head_init = head_init

  def build_head(self, embedding, num_classes):
    logits = keras.layers.Dense(num_classes, kernel_initializer=self.head_init, name="head",
                                dtype="float32")(embedding)
    logits = layers.MemberAxis(1, name="logits")(logits)
    probs = layers.Predictive(name="probs")(logits)
    return {"logits": logits, "probs": probs,
            "uncertainty": layers.UncertaintyScore(self.uncertainty, name="uncertainty")(probs),
            "embedding": embedding}

  def loss(self, labels, outputs):
    return losses.member_cross_entropy(labels, outputs["logits"], self.label_smoothing)
