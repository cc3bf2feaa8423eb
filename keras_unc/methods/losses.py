"""Per-example losses: every loss returns `[B]` so methods can weight or combine them."""

from keras import ops


def softmax_cross_entropy(labels, logits, label_smoothing=0.0):
  """Cross-entropy of `[B, C]` logits against int labels `[B]` or soft labels `[B, C]`."""
  logits = ops.cast(logits, "float32")
  num_classes = logits.shape[-1]
  if len(labels.shape) == 1:
    labels = ops.one_hot(ops.cast(labels, "int32"), num_classes)
  labels = ops.cast(labels, "float32")
  if label_smoothing:
    labels = labels * (1.0 - label_smoothing) + label_smoothing / num_classes
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
