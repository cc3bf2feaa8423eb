"""Exact rank-based binary ranking metrics shared by the calibration and OOD modules.

Everything here is pure NumPy, works in float64 (integer counts where possible)
and runs in ``O(N log N)`` time (one sort), so it is fine for ``10**6`` examples.

Conventions: ``scores`` is a 1-D array where a *higher* score means "more likely
positive"; ``positives`` is a 1-D boolean (or 0/1) array of the same length.
"""

from __future__ import annotations

import numpy as np

__all__ = ["auroc", "binary_clf_curve", "validate_binary"]


def validate_binary(scores, positives):
    """Validate and convert ``(scores, positives)`` for the binary ranking metrics.

    Returns:
        ``(scores, positives)`` as a float64 1-D array and a bool 1-D array.

    Raises:
        ValueError: if either input is not 1-D, the lengths differ, the input is
            empty, a score is NaN, or ``positives`` holds values other than
            ``0/1``/``False/True``.
    """
    scores = np.asarray(scores)
    positives = np.asarray(positives)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}.")
    if positives.ndim != 1:
        raise ValueError(f"positives must be 1-D, got shape {positives.shape}.")
    if scores.shape[0] != positives.shape[0]:
        raise ValueError(
            "scores and positives must have the same length, got "
            f"{scores.shape[0]} scores and {positives.shape[0]} positives."
        )
    if scores.shape[0] == 0:
        raise ValueError("scores and positives must not be empty.")
    if not (np.issubdtype(scores.dtype, np.number) or scores.dtype == np.bool_):
        raise ValueError(f"scores must be numeric, got dtype {scores.dtype}.")
    scores = scores.astype(np.float64)
    if np.isnan(scores).any():
        raise ValueError(f"scores contain {int(np.isnan(scores).sum())} NaN value(s).")
    if positives.dtype != np.bool_:
        if not np.issubdtype(positives.dtype, np.number):
            raise ValueError(
                f"positives must be boolean or 0/1, got dtype {positives.dtype}."
            )
        bad = (positives != 0) & (positives != 1)
        if bad.any():
            raise ValueError(
                "positives must contain only 0/1 (or False/True); found "
                f"{int(bad.sum())} other value(s), e.g. {positives[bad][0]!r}."
            )
        positives = positives == 1
    return scores, positives


def _class_counts(positives):
    n_pos = int(np.count_nonzero(positives))
    return n_pos, int(positives.shape[0]) - n_pos


def auroc(scores, positives) -> float:
    """Exact area under the ROC curve via the Mann-Whitney U statistic.

    ``AUROC = P(s+ > s-) + 0.5 * P(s+ == s-)`` for a random positive ``s+`` and a
    random negative ``s-``.  Computed from average (mid-)ranks of the pooled scores::

        U    = sum_{i positive} rank_i - n_pos (n_pos + 1) / 2
        AUROC = U / (n_pos * n_neg)

    where tied scores share the mean of the ranks they span.  Ranks are kept as
    exact integers (twice the average rank), so the only rounding is the final
    division.  One ``O(N log N)`` sort; equals ``sklearn.metrics.roc_auc_score``.

    Reference: Hanley & McNeil (1982), "The meaning and use of the area under a
    receiver operating characteristic (ROC) curve", Radiology 143(1).

    Args:
        scores: 1-D array, higher = more likely positive.
        positives: 1-D bool / 0-1 array, same length.

    Returns:
        AUROC as a Python float in ``[0, 1]``.

    Raises:
        ValueError: on shape/length/value problems, or when only one class is
            present (the message gives both counts).
    """
    scores, positives = validate_binary(scores, positives)
    n_pos, n_neg = _class_counts(positives)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            "AUROC is undefined when only one class is present: got "
            f"{n_pos} positive(s) and {n_neg} negative(s)."
        )
    n = scores.shape[0]
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    p = positives[order].astype(np.int64)
    # Tie groups [start, end) in the ascending sort; 1-based ranks start+1..end,
    # so twice the average rank is start + end + 1 (an integer).
    change = np.flatnonzero(s[1:] != s[:-1]) + 1
    starts = np.concatenate(([0], change)).astype(np.int64)
    ends = np.concatenate((change, [n])).astype(np.int64)
    pos_per_group = np.add.reduceat(p, starts)
    twice_rank_sum = int(np.dot(starts + ends + 1, pos_per_group))
    twice_u = twice_rank_sum - n_pos * (n_pos + 1)
    return float(twice_u / (2 * n_pos * n_neg))


def binary_clf_curve(scores, positives):
    """Cumulative true/false positive counts at each distinct score threshold.

    Thresholds are the distinct score values scanned from high to low; at
    threshold ``t`` everything with ``score >= t`` is predicted positive (the
    same construction as sklearn's private ``_binary_clf_curve``).

    Args:
        scores, positives: already validated by :func:`validate_binary`.

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
