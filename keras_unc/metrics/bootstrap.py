"""Percentile bootstrap confidence intervals for any metric of per-example arrays.

A replicate resamples the ``N`` examples with replacement (the same indices for
every array of the replicate), recomputes the metric, and the interval is the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of the
replicate values (NumPy's default linear interpolation).  Replicates whose
value is NaN (a metric undefined on that resample) are left out.

Replicate ``r`` draws its indices from ``np.random.default_rng([seed, *stream, r])``
(:func:`bootstrap_indices`), so the same seed gives the same intervals and a
caller can give each data source its own independent stream.

Reference: Efron & Tibshirani (1993), "An Introduction to the Bootstrap",
Chapman & Hall, chapter 13 (percentile interval).
"""

from __future__ import annotations

import numpy as np

from keras_unc.metrics.validation import check_int

__all__ = ["bootstrap_indices", "check_confidence", "percentile_bootstrap", "percentile_interval"]


def check_confidence(confidence) -> float:
  """Validate a confidence level in ``(0, 1)``."""
  if (
    isinstance(confidence, bool)
    or not isinstance(confidence, (int, float, np.integer, np.floating))
    or not 0.0 < float(confidence) < 1.0
  ):
    raise ValueError(
      f"confidence must be a number in (0, 1), e.g. 0.95 for a 95% interval, got {confidence!r}."
    )
  return float(confidence)


def bootstrap_indices(n, seed, replicate, stream=()) -> np.ndarray:
  """Indices ``[n]`` drawn with replacement from ``range(n)`` for one replicate.

  Args:
    n: number of examples.
    seed: non-negative integer seed.
    replicate: non-negative replicate number.
    stream: extra non-negative integers naming an independent stream (e.g. one per
      data split); the generator is ``np.random.default_rng([seed, *stream, replicate])``.

  Returns:
    An int64 array of ``n`` indices in ``[0, n)``.
  """
  n = check_int(n, "n")
  seed = check_int(seed, "seed", minimum=0)
  replicate = check_int(replicate, "replicate", minimum=0)
  stream = [check_int(s, "stream", minimum=0) for s in stream]
  rng = np.random.default_rng([seed, *stream, replicate])
  return rng.integers(0, n, size=n)


def percentile_interval(samples, confidence=0.95):
  """``(low, high)``: the central ``confidence`` percentile interval of ``samples``.

  NaN samples are left out; with none left the interval is ``(nan, nan)``.
  """
  confidence = check_confidence(confidence)
  samples = np.asarray(samples, np.float64).ravel()
  samples = samples[~np.isnan(samples)]
  if samples.size == 0:
    return float("nan"), float("nan")
  alpha = 100.0 * (1.0 - confidence) / 2.0
  low, high = np.percentile(samples, [alpha, 100.0 - alpha])
  return float(low), float(high)


def percentile_bootstrap(metric, arrays, num_samples=1000, confidence=0.95, seed=0):
  """Percentile bootstrap interval of ``metric(*arrays)`` over resampled examples.

  Args:
    metric: function of the arrays returning a float (NaN allowed: that replicate is
      left out).
    arrays: sequence of arrays sharing their first axis ``N`` (e.g. ``(probs,
      labels)``), resampled with the same indices.
    num_samples: number of bootstrap replicates (positive).
    confidence: interval level in ``(0, 1)``.
    seed: non-negative integer; replicate ``r`` uses ``bootstrap_indices(N, seed, r)``.

  Returns:
    ``(low, high)`` floats.

  Raises:
    ValueError: on arrays of different lengths, an empty array, or bad arguments.

  Example:
    ```python
    low, high = percentile_bootstrap(metrics.accuracy, (probs, labels), 1000)
    ```
  """
  num_samples = check_int(num_samples, "num_samples")
  confidence = check_confidence(confidence)
  arrays = [np.asarray(a) for a in arrays]
  if not arrays or any(a.ndim == 0 for a in arrays):
    raise ValueError("arrays must be a non-empty sequence of arrays with a leading example axis.")
  lengths = {a.shape[0] for a in arrays}
  if len(lengths) != 1:
    raise ValueError(
      f"arrays must share their first (example) axis, got lengths {sorted(lengths)}."
    )
  n = lengths.pop()
  if n == 0:
    raise ValueError("arrays must not be empty.")
  values = []
  for r in range(num_samples):
    idx = bootstrap_indices(n, seed, r)
    values.append(float(metric(*[a[idx] for a in arrays])))
  return percentile_interval(values, confidence)
