"""Metrics of conformal prediction sets: marginal coverage, mean set size and size-stratified
coverage (SSCV).

Reference: Angelopoulos, Bates, Malik & Jordan, "Uncertainty Sets for Image Classifiers using
Conformal Prediction", ICLR 2021 (SSCV, Section 4).
"""

from __future__ import annotations

import numpy as np

from keras_unc.metrics.validation import check_fraction, check_labels

__all__ = ["coverage", "mean_set_size", "size_stratified_coverage", "sscv"]


def check_prediction_set(prediction_set, name="prediction_set") -> np.ndarray:
  """Validate a prediction-set mask `[N, C]` (bool or 0/1); return a bool array."""
  sets = np.asarray(prediction_set)
  if sets.ndim != 2:
    raise ValueError(
      f"{name} must be a 2-D [N, C] mask (True where a class is in the set), got shape "
      f"{sets.shape}."
    )
  if sets.size == 0:
    raise ValueError(f"{name} must be non-empty, got shape {sets.shape}.")
  if sets.dtype == np.bool_:
    return sets
  if not np.issubdtype(sets.dtype, np.number):
    raise ValueError(f"{name} must be boolean or 0/1, got dtype {sets.dtype}.")
  bad = (sets != 0) & (sets != 1)
  if bad.any():
    raise ValueError(
      f"{name} must hold only 0/1 (or False/True); found {int(bad.sum())} other value(s), e.g. "
      f"{sets[bad][0]!r}. Pass the set mask, not probabilities or scores."
    )
  return sets == 1


def _sets_labels(prediction_set, labels):
  sets = check_prediction_set(prediction_set)
  labels = check_labels(labels, sets.shape[0], sets.shape[1])
  return sets, labels


def coverage(prediction_set, labels) -> float:
  """Marginal coverage: the fraction of examples whose label is in their prediction set.

  Args:
    prediction_set: `[N, C]` bool (or 0/1) mask.
    labels: `[N]` integer labels in `[0, C)`.

  Returns:
    A float in [0, 1].
  """
  sets, labels = _sets_labels(prediction_set, labels)
  return float(np.mean(sets[np.arange(len(labels)), labels]))


def mean_set_size(prediction_set) -> float:
  """Mean number of classes per prediction set (`[N, C]` bool or 0/1 mask)."""
  return float(np.mean(check_prediction_set(prediction_set).sum(axis=1)))


def _bins(size_bins, sizes, num_classes):
  if size_bins is None:
    return [(int(s), int(s)) for s in np.unique(sizes)]
  try:
    bins = [(int(lo), int(hi)) for lo, hi in size_bins]
  except (TypeError, ValueError) as error:
    raise ValueError(
      f"size_bins must be a sequence of inclusive (low, high) set-size pairs, e.g. "
      f"[(0, 1), (2, 3), (4, {num_classes})], got {size_bins!r}."
    ) from error
  if not bins:
    raise ValueError("size_bins must hold at least one (low, high) pair.")
  for lo, hi in bins:
    if lo < 0 or hi < lo:
      raise ValueError(f"size_bins pairs need 0 <= low <= high, got ({lo}, {hi}).")
  ordered = sorted(bins)
  for (_, hi), (lo, _) in zip(ordered, ordered[1:]):
    if lo <= hi:
      raise ValueError(f"size_bins must not overlap, got {bins}.")
  inside = np.zeros(len(sizes), bool)
  for lo, hi in bins:
    inside |= (sizes >= lo) & (sizes <= hi)
  if not inside.all():
    missing = sorted({int(s) for s in sizes[~inside]})
    raise ValueError(
      f"size_bins {bins} do not cover the set sizes {missing} of {int((~inside).sum())} "
      f"example(s): add bins for them (e.g. end with (low, {num_classes}))."
    )
  return bins


def size_stratified_coverage(prediction_set, labels, size_bins=None) -> dict:
  """Coverage per set-size bin.

  Args:
    prediction_set: `[N, C]` bool (or 0/1) mask.
    labels: `[N]` integer labels in `[0, C)`.
    size_bins: inclusive `(low, high)` set-size ranges that must cover every example's size
      and not overlap (the paper uses `[(0, 1), (2, 3), (4, 6), (7, 10), (11, 100),
      (101, 1000)]` on ImageNet); default one bin per set size that occurs.

  Returns:
    `{"bins": [(low, high), ...], "count": int64 [B], "coverage": float64 [B]}`, with NaN
    coverage for an empty bin.
  """
  sets, labels = _sets_labels(prediction_set, labels)
  sizes = sets.sum(axis=1)
  covered = sets[np.arange(len(labels)), labels]
  bins = _bins(size_bins, sizes, sets.shape[1])
  count = np.zeros(len(bins), np.int64)
  cov = np.full(len(bins), np.nan)
  for i, (lo, hi) in enumerate(bins):
    members = (sizes >= lo) & (sizes <= hi)
    count[i] = members.sum()
    if count[i]:
      cov[i] = covered[members].mean()
  return {"bins": bins, "count": count, "coverage": cov}


def sscv(prediction_set, labels, alpha, size_bins=None) -> float:
  """Size-stratified coverage violation: `max_bins |coverage(bin) - (1 - alpha)|` over the
  non-empty set-size bins (Angelopoulos et al. 2021, eq. 6). Lower is better; 0 means every
  set size covers at exactly the target rate.

  Args:
    prediction_set: `[N, C]` bool (or 0/1) mask.
    labels: `[N]` integer labels in `[0, C)`.
    alpha: the miscoverage level the sets were built for, in (0, 1).
    size_bins: as `size_stratified_coverage`.

  Returns:
    A float in [0, 1].
  """
  alpha = check_fraction(alpha, "alpha")
  found = size_stratified_coverage(prediction_set, labels, size_bins)
  cov = found["coverage"][found["count"] > 0]
  return float(np.max(np.abs(cov - (1.0 - alpha))))
