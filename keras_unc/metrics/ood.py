"""Exact out-of-distribution (OOD) detection metrics on NumPy arrays.

Convention: a *higher* score means *more OOD* (e.g. ``1 - max p``, entropy).
Pure NumPy, float64, ``O(N log N)``.

Reference: Hendrycks & Gimpel (2017), "A Baseline for Detecting Misclassified
and Out-of-Distribution Examples in Neural Networks", ICLR (AUROC, AUPR-In,
AUPR-Out and FPR at 95% TPR with the maximum softmax probability baseline).
"""

from __future__ import annotations

import warnings

import numpy as np

from keras_unc.metrics.ranking import _class_counts, auroc, binary_clf_curve
from keras_unc.metrics.validation import check_binary, check_logits, check_scores

__all__ = ["auroc", "average_precision", "fpr_at_tpr", "max_logit_score", "ood_metrics"]


def average_precision(scores, positives) -> float:
  """Average precision (area under the step-wise precision-recall curve).

  With thresholds at the distinct score values ``t_1 > t_2 > ... > t_K``,
  ``P_k``/``R_k`` the precision/recall of predicting ``score >= t_k`` as
  positive and ``R_0 = 0``::

      AP = sum_k (R_k - R_{k-1}) * P_k

  Identical to ``sklearn.metrics.average_precision_score`` (tied scores form
  a single threshold; no interpolation).

  Raises:
      ValueError: on shape/value problems or when there is no positive.
  """
  scores, positives = check_binary(scores, positives)
  n_pos, n_neg = _class_counts(positives)
  if n_pos == 0:
    raise ValueError(
      "average precision is undefined without positives: got "
      f"{n_pos} positive(s) and {n_neg} negative(s)."
    )
  fps, tps, _ = binary_clf_curve(scores, positives)
  precision = tps / (tps + fps)
  recall_gain = np.diff(np.concatenate(([0], tps))) / n_pos
  return float(np.sum(recall_gain * precision))


def fpr_at_tpr(scores, positives, tpr: float = 0.95) -> float:
  """False-positive rate at the first threshold whose TPR reaches ``tpr``.

  Thresholds are scanned from high to low over the distinct score values
  (starting with "nothing positive", TPR = FPR = 0); the result is the FPR of
  the first threshold with ``TPR >= tpr``.  This equals
  ``fpr[np.argmax(tpr_curve >= tpr)]`` for
  ``sklearn.metrics.roc_curve(positives, scores, drop_intermediate=False)``.
  With ``tpr = 0.95`` this is the "FPR95" of Hendrycks & Gimpel (2017).

  Raises:
      ValueError: if ``tpr`` is not in ``[0, 1]``, on shape/value problems, or
          when only one class is present.
  """
  if not (0.0 <= tpr <= 1.0):
    raise ValueError(f"tpr must be in [0, 1], got {tpr!r}.")
  scores, positives = check_binary(scores, positives)
  n_pos, n_neg = _class_counts(positives)
  if n_pos == 0 or n_neg == 0:
    raise ValueError(
      "FPR at TPR is undefined when only one class is present: got "
      f"{n_pos} positive(s) and {n_neg} negative(s)."
    )
  fps, tps, _ = binary_clf_curve(scores, positives)
  tpr_curve = np.concatenate(([0], tps)) / n_pos
  fpr_curve = np.concatenate(([0], fps)) / n_neg
  return float(fpr_curve[np.argmax(tpr_curve >= tpr)])


def max_logit_score(logits) -> np.ndarray:
  """Per-example OOD score ``-max_c logit_c`` (higher = more OOD).

  ``logits`` is ``[N, C]`` or ``[N, M, C]``; with a member axis the logits are
  first averaged over the ``M`` members.  Returns a float64 ``[N]`` array.

  Reference: Hendrycks et al. (2022), "Scaling Out-of-Distribution Detection
  for Real-World Settings", ICML (MaxLogit).
  """
  logits = check_logits(logits)
  if logits.ndim == 3:
    logits = logits.mean(axis=1)
  return -logits.max(axis=1)


def ood_metrics(scores_in, scores_out) -> dict:
  """Standard OOD detection metrics from in- and out-of-distribution scores.

  Higher score = more OOD; positives are the OOD examples.

  Returns:
      ``{"auroc": AUROC(OOD positive),
         "aupr_out": AP(OOD positive, score),
         "aupr_in": AP(in-distribution positive, -score),
         "fpr95": FPR (in-dist flagged as OOD) at 95% TPR on OOD}``

  An OOD score array identical to the in-distribution one (same shape and
  values in the same order, e.g. the same split passed twice) is legal but
  meaningless (AUROC 0.5 by construction) and emits a ``UserWarning``.  Arrays
  holding one constant value (e.g. an untrained zero-initialised head) do not
  warn: they say nothing about the two sets being the same data.

  Reference: Hendrycks & Gimpel (2017), ICLR.

  Raises:
      ValueError: if either score set is empty, not 1-D or not finite.
  """
  scores_in = check_scores(scores_in, "scores_in")
  scores_out = check_scores(scores_out, "scores_out")
  if (
    scores_in.shape == scores_out.shape
    and scores_in.min() != scores_in.max()
    and np.array_equal(scores_in, scores_out)
  ):
    warnings.warn(
      "ood_metrics: the OOD scores are identical to the in-distribution scores "
      f"({scores_in.shape[0]} values); was the same split passed as in- and "
      "out-of-distribution? The metrics are computed but meaningless.",
      UserWarning,
      stacklevel=2,
    )
  scores = np.concatenate((scores_in, scores_out))
  is_out = np.concatenate(
    (np.zeros(scores_in.shape[0], dtype=bool), np.ones(scores_out.shape[0], dtype=bool))
  )
  return {
    "auroc": auroc(scores, is_out),
    "aupr_out": average_precision(scores, is_out),
    "aupr_in": average_precision(-scores, ~is_out),
    "fpr95": fpr_at_tpr(scores, is_out, 0.95),
  }
