"""Metrics against human label distributions (CIFAR-10H) and label sets (ImageNet ReaL).

``soft_labels`` are ``[N, C]`` per-example distributions over classes (e.g.
annotator vote frequencies), non-negative with rows summing to 1.
"""

from __future__ import annotations

import numpy as np

from keras_unc.metrics.validation import (
  check_probs,
  check_scores,
  check_soft_labels,
)

__all__ = [
  "generalized_energy_distance",
  "kl_to_labels",
  "real_accuracy",
  "soft_nll",
  "spearman_uncertainty_vs_label_entropy",
]

#: Probability floor of the log in :func:`soft_nll` / :func:`kl_to_labels`.
LOG_EPS = 1e-12


def _xlogy(x, y):
  """``x * log(y)`` with ``0 * log(anything) = 0`` and ``y`` floored at LOG_EPS."""
  return np.where(x > 0, x * np.log(np.maximum(y, LOG_EPS)), 0.0)


def _probs_and_soft(probs, soft_labels):
  probs = check_probs(probs)
  q = check_soft_labels(soft_labels, n=probs.shape[0], num_classes=probs.shape[1])
  return probs, q


def soft_nll(probs, soft_labels) -> float:
  """Cross-entropy with soft labels, ``(1/N) sum_i -sum_c q_ic log p_ic`` (nats).

  ``p`` is floored at ``1e-12`` inside the log (as :func:`nll`); classes with
  ``q = 0`` contribute nothing.
  """
  probs, q = _probs_and_soft(probs, soft_labels)
  return float(-np.mean(np.sum(_xlogy(q, probs), axis=1)))


def kl_to_labels(probs, soft_labels) -> float:
  """Mean ``KL(q || p) = sum_c q_c (log q_c - log p_c)`` (nats, ``0 log 0 = 0``).

  Equals :func:`soft_nll` minus the mean entropy of the soft labels.
  """
  probs, q = _probs_and_soft(probs, soft_labels)
  return float(np.mean(np.sum(_xlogy(q, q) - _xlogy(q, probs), axis=1)))


def real_accuracy(probs, label_sets) -> float:
  """ImageNet-ReaL accuracy: is ``argmax p`` in the example's set of valid labels?

  Args:
      probs: ``[N, C]`` probabilities (argmax ties -> lowest class index).
      label_sets: a NumPy ``[N, C]`` multi-hot array (bool or 0/1), or a
          sequence of ``N`` integer arrays/lists of valid class ids.

  Examples with an empty set are skipped (ReaL leaves ~1k of the 50k
  validation images without a valid label).

  Reference: Beyer et al. (2020), "Are we done with ImageNet?", arXiv:2006.07159.

  Raises:
      ValueError: if every set is empty, on a length mismatch or on class
          ids outside ``[0, C)``.
  """
  probs = check_probs(probs)
  n, c = probs.shape
  if isinstance(label_sets, np.ndarray) and label_sets.ndim == 2:
    if label_sets.shape != (n, c):
      raise ValueError(
        f"multi-hot label_sets must have shape {(n, c)} to match probs, got {label_sets.shape}."
      )
    if label_sets.dtype != np.bool_:
      if not np.isin(label_sets, (0, 1)).all():
        raise ValueError("multi-hot label_sets must contain only 0/1 or False/True.")
    multi_hot = label_sets.astype(bool)
  else:
    if len(label_sets) != n:
      raise ValueError(
        f"label_sets must have one entry per example: expected {n}, got {len(label_sets)}."
      )
    multi_hot = np.zeros((n, c), dtype=bool)
    for i, labels in enumerate(label_sets):
      labels = np.asarray(labels).reshape(-1)
      if labels.size == 0:
        continue
      if not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating) or (labels != np.round(labels)).any():
          raise ValueError(f"label_sets[{i}] must hold integer class ids, got {labels!r}.")
        labels = labels.astype(np.int64)
      if (labels < 0).any() or (labels >= c).any():
        raise ValueError(f"label_sets[{i}] has class ids outside [0, {c}): {labels.tolist()}.")
      multi_hot[i, labels] = True
  valid = multi_hot.any(axis=1)
  if not valid.any():
    raise ValueError("ReaL accuracy is undefined: every label set is empty.")
  hit = multi_hot[np.arange(n), probs.argmax(axis=1)]
  return float(hit[valid].mean())


def generalized_energy_distance(member_probs_or_samples, soft_labels, return_components=False):
  """Generalised energy distance between predicted and human label distributions.

  Plex / uncertainty-baselines (``baselines/jft/cifar10h_utils.py``,
  ``generalized_energy_distance``; Eq. 8 of arXiv:2006.06015) per example::

      GED = 2 E[d(y, y_hat)] - E[d(y, y')] - E[d(y_hat, y_hat')]

  with ``y, y' ~ q`` (soft labels), ``y_hat, y_hat' ~ p`` independent class
  draws and the distance ``d(a, b) = [a != b]`` between two classes (the
  off-diagonal mask of uncertainty-baselines), so
  ``E[d(y, y_hat)] = 1 - q.p``, ``E[d(y, y')] = 1 - q.q`` (label diversity),
  ``E[d(y_hat, y_hat')] = 1 - p.p`` (sample diversity) and
  ``GED = ||q - p||^2``; the result is the mean over examples.

  ``[N, M, C]`` input (ensemble members, MC samples or one-hot sampled
  labels) is the mixture ``p = mean_m p_m``: ``y_hat, y_hat'`` are independent
  draws from it, self-pairs included (a V-statistic).

  Args:
      member_probs_or_samples: ``[N, C]`` or ``[N, M, C]`` probabilities.
      soft_labels: ``[N, C]`` human label distributions.
      return_components: also return the means of the three terms.

  Returns:
      GED as a float, or with ``return_components`` a dict with ``ged``,
      ``distance`` (``E d(y, y_hat)``), ``label_diversity`` and
      ``sample_diversity``.
  """
  p = check_probs(member_probs_or_samples, name="member_probs_or_samples", ndim=(2, 3))
  if p.ndim == 3:
    p = p.mean(axis=1)
  q = check_soft_labels(soft_labels, n=p.shape[0], num_classes=p.shape[1])
  distance = 1.0 - np.sum(q * p, axis=1)
  label_div = 1.0 - np.sum(q * q, axis=1)
  sample_div = 1.0 - np.sum(p * p, axis=1)
  ged = float(np.mean(2.0 * distance - label_div - sample_div))
  if not return_components:
    return ged
  return {
    "ged": ged,
    "distance": float(distance.mean()),
    "label_diversity": float(label_div.mean()),
    "sample_diversity": float(sample_div.mean()),
  }


def _average_ranks(x):
  order = np.argsort(x, kind="stable")
  s = x[order]
  starts = np.concatenate(([0], np.flatnonzero(s[1:] != s[:-1]) + 1))
  ends = np.concatenate((starts[1:], [x.shape[0]]))
  ranks = np.empty(x.shape[0])
  ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
  return ranks


def spearman_uncertainty_vs_label_entropy(uncertainty, soft_labels) -> float:
  """Spearman rank correlation between uncertainty and soft-label entropy.

  URL ``rcorr_entropy``: Pearson correlation of the average ranks (ties share
  their mean rank) of ``uncertainty [N]`` and of ``H(q_i) = -sum_c q_ic log
  q_ic`` (nats; summed over the sorted ``q_i``, so permuted label
  distributions tie exactly).  Equals ``scipy.stats.spearmanr``.

  Raises:
      ValueError: if either variable is constant (correlation undefined) or
          on invalid inputs.
  """
  q = check_soft_labels(soft_labels)
  u = check_scores(uncertainty, "uncertainty", n=q.shape[0])
  q = np.sort(q, axis=1)  # Same summation order for permuted rows: exact ties.
  h = -np.sum(_xlogy(q, q), axis=1)
  ru, rh = _average_ranks(u), _average_ranks(h)
  ru -= ru.mean()
  rh -= rh.mean()
  denom = np.sqrt(np.sum(ru * ru) * np.sum(rh * rh))
  if denom == 0.0:
    which = "uncertainty" if np.all(ru == 0) else "the soft-label entropy"
    raise ValueError(
      f"Spearman correlation is undefined: {which} is constant over all {q.shape[0]} examples."
    )
  return float(np.sum(ru * rh) / denom)
