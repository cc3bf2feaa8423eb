"""Layers that turn head logits into the output convention of every keras_unc model.

`logits [B, M, C]` (M ensemble members or samples, 1 for a deterministic model),
`probs [B, C]` (member mean of softmax) and `uncertainty [B]` (higher = less certain).
"""

import keras
from keras import ops

UNCERTAINTY_SCORES = ("msp", "entropy")


@keras.saving.register_keras_serializable(package="keras_unc")
class MemberAxis(keras.layers.Layer):
  """Reshapes `[M * B, C]` logits of a batch tiled M times into `[B, M, C]`.

  Args:
    num_members: M at inference. With M = 1 this only inserts the member axis.
    train_members: M in training calls (MC dropout trains on one sample); default M.
  """

  def __init__(self, num_members=1, train_members=None, **kwargs):
    super().__init__(**kwargs)
    self.num_members = num_members
    self.train_members = train_members

  def call(self, logits, training=None):
    m = self.num_members
    if training and self.train_members is not None:
      m = self.train_members
    x = ops.reshape(logits, (m, -1, logits.shape[-1]))  # Member i owns rows [i*B, (i+1)*B).
    return ops.transpose(x, (1, 0, 2))

  def compute_output_shape(self, input_shape):
    return (None, self.num_members, input_shape[-1])

  def get_config(self):
    return {
      **super().get_config(),
      "num_members": self.num_members,
      "train_members": self.train_members,
    }


@keras.saving.register_keras_serializable(package="keras_unc")
class MemberMean(keras.layers.Layer):
  """Averages a tiled `[M * B, D]` tensor over its M members: `[B, D]`.

  The exported `embedding` of an ensemble is the member mean, so every model has one
  `[B, D]` representation whatever its method.

  Args:
    num_members: M at inference.
    train_members: M in training calls; default M.
  """

  def __init__(self, num_members=1, train_members=None, **kwargs):
    super().__init__(**kwargs)
    self.num_members = num_members
    self.train_members = train_members

  def call(self, x, training=None):
    m = self.num_members
    if training and self.train_members is not None:
      m = self.train_members
    return ops.mean(ops.reshape(x, (m, -1, x.shape[-1])), axis=0)

  def compute_output_shape(self, input_shape):
    return (None, input_shape[-1])

  def get_config(self):
    return {
      **super().get_config(),
      "num_members": self.num_members,
      "train_members": self.train_members,
    }


@keras.saving.register_keras_serializable(package="keras_unc")
class Predictive(keras.layers.Layer):
  """Predictive distribution `p = mean_m softmax(logits_m)` from `[B, M, C]` logits.

  Args:
    kind: "softmax" (classes exclusive) or "sigmoid" (multi-label: mean of the
      per-class sigmoids).
  """

  def __init__(self, kind="softmax", **kwargs):
    super().__init__(**kwargs)
    if kind not in ("softmax", "sigmoid"):
      raise ValueError(f"Unknown predictive {kind!r}: choose 'softmax' or 'sigmoid'.")
    self.kind = kind

  def call(self, logits):
    logits = ops.cast(logits, "float32")
    probs = ops.softmax(logits, axis=-1) if self.kind == "softmax" else ops.sigmoid(logits)
    return ops.mean(probs, axis=1)

  def compute_output_shape(self, input_shape):
    return (input_shape[0], input_shape[-1])

  def get_config(self):
    return {**super().get_config(), "kind": self.kind}


@keras.saving.register_keras_serializable(package="keras_unc")
class UncertaintyScore(keras.layers.Layer):
  """Scalar uncertainty from the predictive: `msp` = 1 − max p, `entropy` = −Σ p log p.

  Args:
    kind: one of `UNCERTAINTY_SCORES`.

  Reference: Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
  Out-of-Distribution Examples in Neural Networks", ICLR 2017.
  """

  def __init__(self, kind="msp", **kwargs):
    super().__init__(**kwargs)
    if kind not in UNCERTAINTY_SCORES:
      raise ValueError(f"Unknown uncertainty score {kind!r}: choose one of {UNCERTAINTY_SCORES}.")
    self.kind = kind

  def call(self, probs):
    if self.kind == "msp":
      return 1.0 - ops.max(probs, axis=-1)
    return -ops.sum(ops.where(probs > 0, probs * ops.log(ops.maximum(probs, 1e-30)), 0.0), axis=-1)

  def compute_output_shape(self, input_shape):
    return (input_shape[0],)

  def get_config(self):
    return {**super().get_config(), "kind": self.kind}
