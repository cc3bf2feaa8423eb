"""Exact rank-based binary ranking metrics shared by the calibration and OOD modules.

Everything here is pure NumPy, works in float64 (integer counts where possible)
and runs in ``O(N log N)`` time (sorting), so it is fine for ``10**7`` examples.

Conventions: ``scores`` is a 1-D array where a *higher* score means "more likely
positive"; ``positives`` is a 1-D boolean (or 0/1) array of the same length.
"""

from __future__ import annotations

import numpy as np

from keras_unc.metrics.validation import check_binary

__all__ = ["auroc", "binary_clf_curve", "validate_binary"]


#: Backwards-compatible name of :func:`keras_unc.metrics.validation.check_binary`.
validate_binary = check_binary


def _class_counts(positives):
  n_pos = int(np.count_nonzero(positives))
  return n_pos, int(positives.shape[0]) - n_pos


def auroc(scores, positives) -> float:
  """Exact area under the ROC curve via the Mann-Whitney U statistic.

  ``AUROC = P(s+ > s-) + 0.5 * P(s+ == s-)`` for a random positive ``s+`` and a
  random negative ``s-``.  Computed from average (mid-)ranks of the pooled scores::

      U    = sum_{i positive} rank_i - n_pos (n_pos + 1) / 2
      AUROC = U / (n_pos * n_neg)

  where tied scores share the mean of the ranks they span.  Computed without
  ranking the pooled sample: sort the positive and the negative scores
  separately (``np.sort``, much faster than a stable ``argsort``) and count,
  for every positive, the negatives strictly below (``searchsorted`` left)
  and below-or-equal (right)::

      2 U = sum_{i positive} (#{neg < s_i} + #{neg <= s_i})

  Counts are exact int64, so the only rounding is the final division.
  ``O(N log N)``; equals ``sklearn.metrics.roc_auc_score``.

  Reference: Hanley & McNeil (1982), "The meaning and use of the area under a
  receiver operating characteristic (ROC) curve", Radiology 143(1).

  Args:
      scores: 1-D finite array, higher = more likely positive.
      positives: 1-D bool / 0-1 array, same length.

  Returns:
      AUROC as a Python float in ``[0, 1]``.

  Raises:
      ValueError: on shape/length/value problems (NaN/Inf scores included),
          or when only one class is present (the message gives both counts).
  """
  scores, positives = check_binary(scores, positives)
  n_pos, n_neg = _class_counts(positives)
  if n_pos == 0 or n_neg == 0:
    raise ValueError(
      "AUROC is undefined when only one class is present: got "
      f"{n_pos} positive(s) and {n_neg} negative(s)."
    )
  pos = np.sort(scores[positives])
  neg = np.sort(scores[~positives])
  # Sorted queries let searchsorted reuse the previous position (fast path).
  below = np.searchsorted(neg, pos, side="left")
  below_or_equal = np.searchsorted(neg, pos, side="right")
  twice_u = int(below.sum(dtype=np.int64)) + int(below_or_equal.sum(dtype=np.int64))
  return float(twice_u / (2 * n_pos * n_neg))


def binary_clf_curve(scores, positives):
  """Cumulative true/false positive counts at each distinct score threshold.

  Thresholds are the distinct score values scanned from high to low; at
  threshold ``t`` everything with ``score >= t`` is predicted positive (the
  same construction as sklearn's private ``_binary_clf_curve``).

  Args:
      scores, positives: already validated by :func:`check_binary`.

  Returns:
      ``(fps, tps, thresholds)``: int64 counts and float64 thresholds, in
      decreasing threshold order; ``tps[-1] = n_pos`` and ``fps[-1] = n_neg``.
  """
  order = np.argsort(scores, kind="mergesort")[::-1]
  s = scores[order]
  p = positives[order]
  distinct = np.flatnonzero(s[1:] != s[:-1])
  threshold_idxs = np.concatenate((distinct, [s.shape[0] - 1]))
  tps = np.cumsum(p, dtype=np.int64)[threshold_idxs]
  fps = threshold_idxs.astype(np.int64) + 1 - tps
  return fps, tps, s[threshold_idxs]
