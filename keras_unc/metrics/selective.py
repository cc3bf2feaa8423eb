"""Selective prediction and oracle collaboration: rank examples by uncertainty.

All functions take ``probs [N, C]``, integer ``labels [N]`` and an optional
per-example ``uncertainty [N]`` (higher = less confident; default
``1 - max_c p_c``).  Correctness is ``argmax_c p_c == y``.

Ties: examples with equal uncertainty cannot be ordered, so every quantity is
its expectation over a uniformly random order of tied examples.  Within a tie
group each example counts with the group's mean correctness; the result is
deterministic and does not depend on the input order.
"""

from __future__ import annotations

import numpy as np

from keras_unc.metrics.validation import check_fraction, check_probs_labels, check_scores

__all__ = [
  "accuracy_coverage_curve",
  "augrc",
  "aurc",
  "oracle_collaborative_accuracy",
  "risk_at_coverage",
]


def _ranked_correctness(probs, labels, uncertainty):
  """Expected correctness in order of increasing uncertainty (ties averaged)."""
  probs, labels = check_probs_labels(probs, labels, float64=False)
  n = probs.shape[0]
  if uncertainty is None:
    uncertainty = 1.0 - probs.max(axis=1).astype(np.float64)
  else:
    uncertainty = check_scores(uncertainty, "uncertainty", n=n)
  correct = (probs.argmax(axis=1) == labels).astype(np.float64)
  order = np.argsort(uncertainty, kind="stable")
  u = uncertainty[order]
  c = correct[order]
  starts = np.concatenate(([0], np.flatnonzero(u[1:] != u[:-1]) + 1))
  sizes = np.diff(np.concatenate((starts, [n])))
  group_mean = np.add.reduceat(c, starts) / sizes
  return np.repeat(group_mean, sizes)


def accuracy_coverage_curve(probs, labels, uncertainty=None):
  """Accuracy of the ``k`` most confident examples, for ``k = 1 .. N``.

  Returns:
      ``(coverage, accuracy)``: float64 arrays of length ``N`` with
      ``coverage[k-1] = k / N`` and ``accuracy[k-1]`` the (tie-averaged, see
      module docstring) accuracy of the ``k`` least uncertain examples.

  Reference: Geifman & El-Yaniv (2017), "Selective Classification for Deep
  Neural Networks", NeurIPS.
  """
  expected = _ranked_correctness(probs, labels, uncertainty)
  k = np.arange(1, expected.shape[0] + 1, dtype=np.float64)
  return k / expected.shape[0], np.cumsum(expected) / k


def aurc(probs, labels, uncertainty=None) -> float:
  """Area under the risk-coverage curve (lower is better).

  ``AURC = (1/N) sum_{k=1}^{N} risk_k`` with ``risk_k`` the error rate
  (0/1 loss) of the ``k`` least uncertain examples, i.e. one minus the mean
  of :func:`accuracy_coverage_curve`.  Tied uncertainties: expected risk over
  random tie-breaking (module docstring).

  Reference: Geifman, Uziel & El-Yaniv (2019), "Bias-Reduced Uncertainty
  Estimation for Deep Neural Classifiers", ICLR (Eq. for AURC).
  """
  _, acc = accuracy_coverage_curve(probs, labels, uncertainty)
  return float(np.mean(1.0 - acc))


def augrc(probs, labels, uncertainty=None) -> float:
  """Area under the generalized risk-coverage curve (lower is better).

  The generalized risk at coverage ``k / N`` is the joint probability of being
  accepted and wrong: the number of errors among the ``k`` least uncertain
  examples divided by ``N`` (not by ``k``, as the selective risk of
  :func:`aurc`)::

      AUGRC = (1/N) sum_{k=1}^{N} (1/N) sum_{i <= k} [argmax p_(i) != y_(i)]

  with ``(i)`` the order of increasing uncertainty.  Tied uncertainties: the
  expectation over random tie-breaking, exactly as :func:`aurc` (module
  docstring: each tied example counts with its group's mean error).  This is
  the right Riemann sum of :func:`aurc`; the trapezoid over the points
  ``(0, 0), (1/N, g_1), ..., (1, g_N)`` used by Traub et al.'s code is smaller
  by ``g_N / (2N)`` = (top-1 error) / (2N).  A random ranking gives
  ``error * (N + 1) / (2N)``, about half the top-1 error.

  Reference: Traub, Bungert, Lüth, Baumgartner, Maier-Hein, Maier-Hein & Jaeger
  (2024), "Overcoming Common Flaws in the Evaluation of Selective
  Classification Systems", NeurIPS.
  """
  expected = _ranked_correctness(probs, labels, uncertainty)
  n = expected.shape[0]
  return float(np.mean(np.cumsum(1.0 - expected) / n))


def risk_at_coverage(probs, labels, coverage, uncertainty=None) -> float:
  """Selective risk: the error rate of the ``ceil(coverage * N)`` least uncertain examples.

  ``k = ceil(coverage * N)`` (with a 1e-9 guard against float error, so
  ``0.7 * 10`` keeps 7 examples); at least one example is kept.  Tied
  uncertainties at the cut: expected error over random tie-breaking (module
  docstring).  ``coverage = 1`` gives the top-1 error.

  Reference: Geifman & El-Yaniv (2017), "Selective Classification for Deep
  Neural Networks", NeurIPS (selective risk at a coverage).

  Raises:
      ValueError: if ``coverage`` is not a number in ``(0, 1]`` or on invalid inputs.
  """
  if (
    isinstance(coverage, bool)
    or not isinstance(coverage, (int, float, np.integer, np.floating))
    or not 0.0 < float(coverage) <= 1.0
  ):
    raise ValueError(
      f"coverage must be a number in (0, 1] (the fraction of examples kept), got {coverage!r}."
    )
  expected = _ranked_correctness(probs, labels, uncertainty)
  n = expected.shape[0]
  k = min(n, max(1, int(np.ceil(float(coverage) * n - 1e-9))))
  return float(1.0 - expected[:k].mean())


def oracle_collaborative_accuracy(probs, labels, fraction, uncertainty=None) -> float:
  """Accuracy when the ``fraction`` most uncertain examples go to an oracle.

  ``n_oracle = floor(fraction * N)`` examples with the highest uncertainty
  are counted correct, the rest keep the model's correctness::

      OCA = (n_oracle + sum_{i not sent} [argmax p_i == y_i]) / N

  ``floor`` follows uncertainty-baselines / uncertainty_metrics
  ``OracleCollaborativeAccuracy`` (``int(num_total_examples * fraction)``),
  evaluated with a 1e-9 guard against float error (``0.29 * 100`` gives 29).
  That implementation bins confidences into 100 equal-width bins and, in the
  bin that is only partly sent, credits the rest with the bin's accuracy; here
  the order is exact per example and only a partly sent group of *tied*
  uncertainties is credited with its mean correctness.  Plex reports
  fractions 0.5%, 1%, 2% and 5%.

  Raises:
      ValueError: if ``fraction`` is not in ``[0, 1]`` or on invalid inputs.
  """
  fraction = check_fraction(fraction)
  expected = _ranked_correctness(probs, labels, uncertainty)
  n = expected.shape[0]
  n_oracle = min(n, int(np.floor(fraction * n + 1e-9)))
  return float((n_oracle + expected[: n - n_oracle].sum()) / n)
