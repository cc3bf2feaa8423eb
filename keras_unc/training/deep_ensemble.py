"""`DeepEnsemble`: K trained networks served as one Keras model (the `ensemble` verb's
model, `keras_unc.training.ensemble`, and the stack of SWAG samples,
`keras_unc.training.averaging`). Its own module so that both can use it without an import
cycle.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_unc.layers import UncertaintyScore


class DeepEnsemble(keras.Model):
  """K trained networks as one; the outputs: `keras_unc.training.ensemble`'s docstring.

  Args:
    members: the member networks (each `images -> output dict`).
    uncertainty: "msp" or "entropy" of the ensemble predictive.
  """

  def __init__(self, members, uncertainty="msp", **kwargs):
    super().__init__(**kwargs)
    self.members = list(members)
    self.score = UncertaintyScore(uncertainty, name="uncertainty", dtype="float32")

  def call(self, images, training=False):
    found = [member(images, training=False) for member in self.members]
    probs = ops.mean(ops.stack([ops.cast(f["probs"], "float32") for f in found]), axis=0)
    outputs = {
      "logits": ops.concatenate([ops.cast(f["logits"], "float32") for f in found], axis=1),
      "probs": probs,
      "uncertainty": self.score(probs),
    }
    if all("embedding" in f for f in found):
      outputs["embedding"] = ops.concatenate(
        [ops.cast(f["embedding"], "float32") for f in found], axis=-1
      )
    return outputs
