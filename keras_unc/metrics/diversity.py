"""Ensemble diversity and per-member quality for member outputs ``[N, M, C]``.

Definitions follow uncertainty-baselines' ``average_pairwise_diversity``
(``uncertainty_metrics/tensorflow/diversity.py``, also robustness_metrics
``AveragePairwiseDiversity``): averages over the ``M (M - 1) / 2`` unordered
member pairs ``i < j`` (``itertools.combinations``) of per-example means.
"""

from __future__ import annotations

import itertools

import numpy as np

from keras_unc.metrics.validation import check_labels, check_logits, check_probs

__all__ = ["ensemble_diversity", "member_metrics"]

#: Floor of the second argument of the log in the pairwise KL.
KL_EPS = 1e-12


def _log_softmax(logits):
  z = logits - logits.max(axis=-1, keepdims=True)
  return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def ensemble_diversity(member_probs, from_logits=False) -> dict:
  """Average pairwise diversity of ensemble members.

  For members ``i < j`` and examples ``n``:

  * ``disagreement``: ``mean_n [argmax p_ni != argmax p_nj]``;
  * ``average_kl``: ``mean_n KL(p_ni || p_nj) = sum_c p log(p / q)`` (the
    ordered pair ``i < j`` as uncertainty-baselines; ``0 log 0 = 0``, ``q``
    floored at 1e-12);
  * ``cosine_similarity``: ``mean_n <p_ni, p_nj> / (|p_ni| |p_nj|)``,

  each averaged over the pairs.

  Args:
      member_probs: ``[N, M, C]`` member probabilities (``M >= 2``), or
          logits with ``from_logits=True`` (softmax applied per member).

  Returns:
      ``{"disagreement", "average_kl", "cosine_similarity"}`` as floats.
  """
  if from_logits:
    logits = check_logits(member_probs, "member_probs")
    if logits.ndim != 3:
      raise ValueError(f"member logits must have shape [N, M, C], got {logits.shape}.")
    probs = np.exp(_log_softmax(logits))
  else:
    probs = check_probs(member_probs, name="member_probs", ndim=3)
  m = probs.shape[1]
  if m < 2:
    raise ValueError(f"ensemble diversity needs at least 2 members, got M = {m}.")
  preds = probs.argmax(axis=-1)
  log_p = np.log(np.maximum(probs, KL_EPS))
  norms = np.linalg.norm(probs, axis=-1)
  dis, kl, cos = [], [], []
  for i, j in itertools.combinations(range(m), 2):
    pi, pj = probs[:, i], probs[:, j]
    dis.append(np.mean(preds[:, i] != preds[:, j]))
    kl.append(np.mean(np.sum(np.where(pi > 0, pi * (log_p[:, i] - log_p[:, j]), 0.0), axis=1)))
    cos.append(np.mean(np.sum(pi * pj, axis=1) / (norms[:, i] * norms[:, j])))
  return {
    "disagreement": float(np.mean(dis)),
    "average_kl": float(np.mean(kl)),
    "cosine_similarity": float(np.mean(cos)),
  }


def member_metrics(member_logits, labels, per_member=False) -> dict:
  """Accuracy and NLL of each ensemble member, averaged over members.

  Member ``m`` predicts ``softmax(member_logits[:, m])``; its accuracy is
  ``mean_n [argmax == y]`` and its NLL ``mean_n -log_softmax(logits)_y``
  (exact log-softmax, no clipping).

  Args:
      member_logits: ``[N, M, C]`` logits (``[N, C]`` is one member).
      labels: ``[N]`` integer labels in ``[0, C)``.
      per_member: also return ``member_{m}_accuracy`` / ``member_{m}_nll``.

  Returns:
      ``{"member_accuracy", "member_nll"}`` (means over members) as floats,
      plus the per-member values if requested.
  """
  logits = check_logits(member_logits, "member_logits")
  if logits.ndim == 2:
    logits = logits[:, None, :]
  n, m, c = logits.shape
  labels = check_labels(labels, n, c)
  log_p = _log_softmax(logits)
  acc = np.mean(logits.argmax(axis=-1) == labels[:, None], axis=0)
  nll = -np.mean(log_p[np.arange(n), :, labels], axis=0)
  out = {"member_accuracy": float(acc.mean()), "member_nll": float(nll.mean())}
  if per_member:
    for k in range(m):
      out[f"member_{k}_accuracy"] = float(acc[k])
      out[f"member_{k}_nll"] = float(nll[k])
  return out
