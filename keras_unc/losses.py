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
