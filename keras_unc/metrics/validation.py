"""Input validation shared by every metric in :mod:`keras_unc.metrics`.

Each ``check_*`` function converts its input to a NumPy array of a fixed dtype
and raises ``ValueError`` with a message that names the argument and the
problem: wrong shape, empty input, mismatched lengths, NaN/Inf values (with
their count), probabilities outside ``[0, 1]`` or rows that do not sum to one,
labels that are not integers or out of range.

Probability rows must sum to 1 within ``PROB_SUM_ATOL = 1e-3`` (for 16-bit
float inputs within ``max(1e-3, C * eps(dtype))``, their own rounding).
"""

from __future__ import annotations

import numpy as np

__all__ = [
  "PROB_SUM_ATOL",
  "check_binary",
  "check_embeddings",
  "check_fraction",
  "check_int",
  "check_labels",
  "check_logits",
  "check_probs",
  "check_probs_labels",
  "check_scores",
  "check_soft_labels",
]

#: Tolerance on ``|sum_c p_c - 1|`` for probability rows.
PROB_SUM_ATOL = 1e-3


def _numeric(x, name):
  x = np.asarray(x)
  if x.dtype.kind == "V" and "float" in str(x.dtype):  # ml_dtypes, e.g. bfloat16.
    x = x.astype(np.float32)
  if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
    raise ValueError(f"{name} must be numeric, got dtype {x.dtype}.")
  return x


def _check_finite(x, name):
  finite = np.isfinite(x)
  if not finite.all():
    bad = x[~finite]
    n_nan = int(np.isnan(bad).sum())
    raise ValueError(
      f"{name} contain {bad.size} non-finite value(s) ({n_nan} NaN, "
      f"{bad.size - n_nan} Inf); all values must be finite."
    )


def _check_ndim(x, ndim, name, what):
  allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
  if x.ndim not in allowed:
    dims = " or ".join(f"{d}-D" for d in allowed)
    raise ValueError(f"{name} must be {dims} with shape {what}, got shape {x.shape}.")
  if x.size == 0:
    raise ValueError(f"{name} must be non-empty, got shape {x.shape}.")


def _sum_tolerance(dtype, num_classes):
  if str(dtype) == "bfloat16":  # ml_dtypes: 8 significant bits.
    return max(PROB_SUM_ATOL, num_classes * 2.0**-7)
  if np.issubdtype(dtype, np.floating) and np.dtype(dtype).itemsize <= 2:
    return max(PROB_SUM_ATOL, num_classes * float(np.finfo(dtype).eps))
  return PROB_SUM_ATOL


def check_probs(probs, name="probs", ndim=2, float64=True) -> np.ndarray:
  """Validate class probabilities ``[N, C]`` (or ``[N, M, C]`` if ``ndim`` allows).

  Checks: allowed rank, non-empty, numeric, finite, inside ``[0, 1]``, and
  each row (last axis) sums to 1 within ``PROB_SUM_ATOL``.  Returns a
  float64 array (``float64=False``: the input dtype, no copy).
  """
  tol = _sum_tolerance(np.asarray(probs).dtype, np.shape(probs)[-1] if np.ndim(probs) else 1)
  probs = _numeric(probs, name)
  what = "[N, C]" if ndim == 2 else "[N, C] or [N, M, C]"
  _check_ndim(probs, ndim, name, what)
  if probs.dtype == np.bool_ or not np.issubdtype(probs.dtype, np.floating):
    probs = probs.astype(np.float64)
  lo, hi = float(probs.min()), float(probs.max())
  if not (np.isfinite(lo) and np.isfinite(hi)):  # NaN propagates through min/max.
    _check_finite(probs, name)
  if lo < 0.0 or hi > 1.0:
    raise ValueError(
      f"{name} must lie in [0, 1], got values in [{lo!r}, {hi!r}] "
      "(did you pass logits instead of probabilities?)."
    )
  # Pairwise float32 sums err by ~1e-7, far below the tolerance; 16-bit inputs
  # accumulate in float64.
  sums = probs.sum(axis=-1, dtype=np.float64 if probs.itemsize <= 2 else None)
  bad = np.abs(sums - 1.0) > tol
  if bad.any():
    first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))
    first = first[0] if len(first) == 1 else first
    raise ValueError(
      f"{name} must sum to 1 over the class axis (tolerance {tol:g}), but "
      f"{int(bad.sum())} of {bad.size} row(s) do not, e.g. row {first} sums to "
      f"{float(sums[first])!r}. Pass softmax outputs (normalised "
      "probabilities), not logits or unnormalised scores."
    )
  return probs.astype(np.float64) if float64 else probs


def check_labels(labels, n, num_classes=None, name="labels") -> np.ndarray:
  """Validate integer class indices ``[N]`` (in ``[0, num_classes)`` if given).

  Integer dtypes and floats holding whole numbers are accepted; returns int64.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(
      f"{name} must be 1-D integer class indices with shape [N], got shape "
      f"{labels.shape} (one-hot labels are not accepted)."
    )
  if n is not None and labels.shape[0] != n:
    raise ValueError(
      f"{name} must have the same length as the predictions: expected {n}, "
      f"got {labels.shape[0]} (shape {labels.shape})."
    )
  if labels.shape[0] == 0:
    raise ValueError(f"{name} must be non-empty.")
  if np.issubdtype(labels.dtype, np.integer):
    labels = labels.astype(np.int64)
  elif np.issubdtype(labels.dtype, np.floating):
    if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
      raise ValueError(f"{name} must be integer class indices; got non-integer values.")
    labels = labels.astype(np.int64)
  else:
    raise ValueError(f"{name} must be integer class indices, got dtype {labels.dtype}.")
  if num_classes is None:
    bad = labels < 0
    rng = "[0, inf)"
  else:
    bad = (labels < 0) | (labels >= num_classes)
    rng = f"[0, {num_classes})"
  if bad.any():
    raise ValueError(
      f"{name} must be in {rng}"
      + ("" if num_classes is None else f" for {num_classes} classes")
      + f"; found {int(bad.sum())} out-of-range label(s), e.g. {int(labels[bad][0])}."
    )
  return labels


def check_probs_labels(probs, labels, float64=True):
  """Validate ``(probs [N, C], labels [N])``; return ``(probs, int64 labels)``."""
  probs = check_probs(probs, float64=float64)
  labels = np.asarray(labels)
  if labels.ndim == 1 and labels.shape[0] != probs.shape[0]:
    raise ValueError(
      f"probs and labels must have the same length, got probs shape "
      f"{probs.shape} and labels shape {labels.shape}."
    )
  return probs, check_labels(labels, probs.shape[0], probs.shape[1])


def check_scores(scores, name="scores", n=None) -> np.ndarray:
  """Validate a finite 1-D score vector (length ``n`` if given); return float64."""
  scores = _numeric(scores, name)
  if scores.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {scores.shape}.")
  if n is not None and scores.shape[0] != n:
    raise ValueError(
      f"{name} must have shape ({n},) to match the other inputs, got {scores.shape}."
    )
  if scores.shape[0] == 0:
    raise ValueError(f"{name} must not be empty.")
  scores = scores.astype(np.float64)
  _check_finite(scores, name)
  return scores


def check_binary(scores, positives):
  """Validate ``(scores, positives)`` for the binary ranking metrics.

  Returns a finite float64 1-D array and a bool 1-D array of the same length.
  ``positives`` must hold only ``0/1`` or ``False/True``.
  """
  scores = _numeric(scores, "scores")
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
  scores = scores.astype(np.float64)
  _check_finite(scores, "scores")
  if positives.dtype != np.bool_:
    if not np.issubdtype(positives.dtype, np.number):
      raise ValueError(f"positives must be boolean or 0/1, got dtype {positives.dtype}.")
    bad = (positives != 0) & (positives != 1)
    if bad.any():
      raise ValueError(
        "positives must contain only 0/1 (or False/True); found "
        f"{int(bad.sum())} other value(s), e.g. {positives[bad][0]!r}."
      )
    positives = positives == 1
  return scores, positives


def check_logits(logits, name="logits") -> np.ndarray:
  """Validate finite logits ``[N, C]`` or ``[N, M, C]``; return float64."""
  logits = _numeric(logits, name)
  _check_ndim(logits, (2, 3), name, "[N, C] or [N, M, C]")
  logits = logits.astype(np.float64)
  _check_finite(logits, name)
  return logits


def check_embeddings(x, name="embeddings", n=None) -> np.ndarray:
  """Validate finite embeddings ``[N, D]`` (N = ``n`` if given); return float64."""
  x = _numeric(x, name)
  _check_ndim(x, 2, name, "[N, D]")
  if n is not None and x.shape[0] != n:
    raise ValueError(f"{name} must have {n} rows to match the labels, got shape {x.shape}.")
  x = x.astype(np.float64)
  _check_finite(x, name)
  return x


def check_soft_labels(soft_labels, n=None, num_classes=None, name="soft_labels"):
  """Validate per-example label distributions ``[N, C]`` (rows sum to 1); float64."""
  q = check_probs(soft_labels, name=name)
  if n is not None and q.shape[0] != n:
    raise ValueError(
      f"{name} must have the same length as the predictions: expected {n} rows, "
      f"got shape {q.shape}."
    )
  if num_classes is not None and q.shape[1] != num_classes:
    raise ValueError(
      f"{name} must have {num_classes} classes to match the predictions, got shape {q.shape}."
    )
  return q


def check_fraction(value, name="fraction") -> float:
  """Validate a real number in ``[0, 1]``."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
  value = float(value)
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{name} must be in [0, 1], got {value!r}.")
  return value


def check_int(value, name, minimum=1) -> int:
  """Validate an integer ``>= minimum`` (bools rejected)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    raise ValueError(f"{name} must be {what}, got {value!r}.")
  return int(value)
