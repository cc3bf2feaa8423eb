"""Per-example losses: every loss returns `[B]` so methods can weight or combine them."""

import gin
from keras import ops


def soft_labels(labels, num_classes, label_smoothing=0.0):
  """`[B, C]` float32 targets from int labels `[B]` (one-hot) or soft labels `[B, C]`,
  smoothed towards uniform by `label_smoothing`.
  """
  if len(labels.shape) == 1:
    labels = ops.one_hot(ops.cast(labels, "int32"), num_classes)
  labels = ops.cast(labels, "float32")
  if label_smoothing:
    labels = labels * (1.0 - label_smoothing) + label_smoothing / num_classes
  return labels


def softmax_cross_entropy(labels, logits, label_smoothing=0.0):
  """Cross-entropy of `[B, C]` logits against int labels `[B]` or soft labels `[B, C]`."""
  logits = ops.cast(logits, "float32")
  labels = soft_labels(labels, logits.shape[-1], label_smoothing)
  return -ops.sum(labels * ops.log_softmax(logits, axis=-1), axis=-1)


def member_cross_entropy(labels, member_logits, label_smoothing=0.0):
  """Mean over members of each member's cross-entropy, for `[B, M, C]` logits.

  Each member is trained on its own prediction (BatchEnsemble, shallow ensembles);
  with M = 1 this is the ordinary cross-entropy.
  """
  m = member_logits.shape[1]
  losses = [softmax_cross_entropy(labels, member_logits[:, i], label_smoothing) for i in range(m)]
  return ops.mean(ops.stack(losses, axis=1), axis=1)


def ensemble_nll(labels, member_logits):
  """Negative log-likelihood of the member-mean predictive, `−log mean_m p_m(y)`, `[B]`.

  Computed as `−logsumexp_m log_softmax(logits_m)_y + log M`. For soft labels it is the
  cross-entropy of the predictive against them.
  """
  logits = ops.cast(member_logits, "float32")
  m, num_classes = logits.shape[1], logits.shape[-1]
  if len(labels.shape) == 1:
    labels = ops.one_hot(ops.cast(labels, "int32"), num_classes)
  log_probs = ops.logsumexp(ops.log_softmax(logits, axis=-1), axis=1) - ops.log(float(m))
  return -ops.sum(ops.cast(labels, "float32") * log_probs, axis=-1)


def sigmoid_cross_entropy(labels, logits):
  """Multi-label loss: sum over classes of binary cross-entropy, `[B]`.

  `labels` are multi-hot (or probabilities) `[B, C]`; `logits` are `[B, C]`, or
  `[B, M, C]` whose members are averaged (mean of the member losses).
  """
  logits = ops.cast(logits, "float32")
  labels = ops.cast(labels, "float32")
  if len(logits.shape) == 3:
    labels = labels[:, None, :]
  # max(x, 0) − x·y + log(1 + exp(−|x|)): the overflow-free form.
  per_class = ops.relu(logits) - logits * labels + ops.log1p(ops.exp(-ops.abs(logits)))
  loss = ops.sum(per_class, axis=-1)
  return ops.mean(loss, axis=1) if len(logits.shape) == 3 else loss


# Markers of the label stream: an integer label < 0 marks an auxiliary outlier example
# (outlier exposure, `keras_unc.data.outliers`), which has no class.
OUTLIER_LABEL = -1


def _member_mean(fn, labels, member_logits):
  """Mean over the M members of `fn(labels, logits [B, C]) -> [B]`."""
  m = member_logits.shape[1]
  return ops.mean(ops.stack([fn(labels, member_logits[:, i]) for i in range(m)], axis=1), axis=1)


@gin.configurable
def logitnorm_loss(labels, member_logits, label_smoothing=0.0, temperature=0.04):
  """LogitNorm: cross-entropy of the L2-normalised logits, `CE(softmax(f / (τ (‖f‖₂ + ε))))`.

  `‖f‖₂` is each example's norm over the classes, `ε = 1e-7` as the reference
  (`LogitNormLoss` in hongxin001/logitnorm_ood `common/loss_function.py`); mean over the
  members of `[B, M, C]` logits, `[B]`. Training only: the network's outputs (and so the
  predictive and its uncertainty) stay the raw logits, as in the paper.

  Args:
    temperature: τ > 0; 0.04 is the paper's CIFAR-10 value (smaller τ: sharper softmax).

  Reference: Wei et al., "Mitigating Neural Network Overconfidence with Logit
  Normalization", ICML 2022.
  """
  if not temperature > 0:
    raise ValueError(
      f"logitnorm_loss.temperature must be > 0, got {temperature}; the paper uses 0.04."
    )

  def one(y, logits):
    logits = ops.cast(logits, "float32")
    norms = ops.sqrt(ops.sum(ops.square(logits), axis=-1, keepdims=True)) + 1e-7
    return softmax_cross_entropy(y, logits / norms / temperature, label_smoothing)

  return _member_mean(one, labels, member_logits)


@gin.configurable
def focal_loss(labels, member_logits, label_smoothing=0.0, gamma=3.0, sample_dependent=False):
  """Focal loss `−(1 − p_y)^γ log p_y` per member, mean over members, `[B]`.

  Args:
    gamma: γ ≥ 0 (0: cross-entropy). Mukhoti et al. calibrate with γ = 3.
    sample_dependent: FLSD-53 of Mukhoti et al.: γ = 5 where `p_y < 0.2`, else γ = 3 (their
      `FocalLossAdaptive` with gamma 3; `gamma` is then ignored). The γ choice carries no
      gradient, as in the reference (it reads `pt` as a number).

  Soft labels `[B, C]` use `−Σ_c y_c (1 − p_c)^γ log p_c`; `label_smoothing` smooths
  integer labels first (the focal form is then that soft-label sum).

  References: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017; Mukhoti et
  al., "Calibrating Deep Neural Networks using Focal Loss", NeurIPS 2020.
  """
  if gamma < 0:
    raise ValueError(f"focal_loss.gamma must be >= 0, got {gamma}; Mukhoti et al. use 3.")

  def one(y, logits):
    logits = ops.cast(logits, "float32")
    y = soft_labels(y, logits.shape[-1], label_smoothing)
    log_p = ops.log_softmax(logits, axis=-1)
    p = ops.exp(log_p)
    if sample_dependent:
      p_y = ops.stop_gradient(ops.sum(y * p, axis=-1, keepdims=True))
      g = ops.where(p_y < 0.2, 5.0, 3.0)
    else:
      g = gamma
    return -ops.sum(y * ops.power(1.0 - p, g) * log_p, axis=-1)

  return _member_mean(one, labels, member_logits)


@gin.configurable
def outlier_exposure_loss(labels, member_logits, label_smoothing=0.0, weight=0.5):
  """Outlier exposure: `CE(in) + λ · mean over outliers of CE(uniform, softmax(f))`.

  The batch mixes in-distribution examples (labels ≥ 0) and auxiliary outliers (label
  `OUTLIER_LABEL` = −1, mixed in by `keras_unc.data.outliers`). The cross-entropy of an
  outlier's softmax to the uniform distribution is `logsumexp(f) − mean_c f_c` (the
  reference's `-(x.mean(1) - logsumexp(x))`, hendrycks/outlier-exposure
  `CIFAR/oe_scratch.py`). Each term is a mean over its own examples, as the reference; the
  per-example `[B]` form rescales them by `B / B_in` and `λ B / B_out` so that the trainer's
  batch mean equals that sum (counts per replica). Mean over the members of `[B, M, C]`.

  Args:
    weight: λ, 0.5 as the paper.

  Reference: Hendrycks et al., "Deep Anomaly Detection with Outlier Exposure", ICLR 2019.
  """
  if len(labels.shape) != 1:
    raise ValueError(
      "loss='outlier_exposure' needs integer labels [B] (outliers are marked by label -1); "
      f"got labels of shape {labels.shape}: turn off soft-label augmentation (mixup)."
    )
  is_out = ops.cast(ops.less(ops.cast(labels, "int32"), 0), "float32")
  clean = ops.where(ops.cast(is_out, "bool"), ops.zeros_like(labels), labels)
  batch = ops.cast(ops.shape(is_out)[0], "float32")
  n_out = ops.sum(is_out)
  n_in = batch - n_out

  def one(y, logits):
    logits = ops.cast(logits, "float32")
    ce = softmax_cross_entropy(y, logits, label_smoothing)
    to_uniform = ops.logsumexp(logits, axis=-1) - ops.mean(logits, axis=-1)
    scale_in = batch / ops.maximum(n_in, 1.0)
    scale_out = weight * batch / ops.maximum(n_out, 1.0)
    return (1.0 - is_out) * ce * scale_in + is_out * to_uniform * scale_out

  return _member_mean(one, clean, member_logits)
