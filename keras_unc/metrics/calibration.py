"""Exact classification and calibration metrics on NumPy arrays.

All functions take ``probs`` of shape ``[N, C]`` (predicted class probabilities,
any float dtype; computation is in float64) and integer ``labels`` of shape
``[N]`` with values in ``[0, C)``, and return Python floats (or NumPy arrays for
per-example / per-bin quantities).  Pure NumPy, no TensorFlow.

Validation (:mod:`keras_unc.metrics.validation`): ``probs`` must be 2-D,
non-empty, finite, inside ``[0, 1]`` and each row must sum to 1 within 1e-3
(pass softmax outputs, not logits); ``labels`` must be 1-D, the same length,
integer-valued (integer dtype, or floats holding whole numbers) and in
``[0, C)``.  Violations raise ``ValueError`` naming the offending shape or value.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from keras_unc.metrics.ranking import auroc
from keras_unc.metrics.validation import check_probs, check_probs_labels, check_scores

__all__ = [
  "CalibrationBins",
  "accuracy",
  "adaptive_calibration_error",
  "brier_score",
  "calibration_auroc",
  "calibration_bins",
  "classwise_calibration_error",
  "entropy",
  "expected_calibration_error",
  "msp_uncertainty",
  "nll",
  "top_k_accuracy",
  "validate_probs",
  "validate_probs_labels",
]

#: Default probability floor used by :func:`nll` (``-log(1e-12) ~= 27.63``).
NLL_EPS = 1e-12


def validate_probs(probs) -> np.ndarray:
  """Return ``probs`` as a float64 ``[N, C]`` array or raise ``ValueError``.

  See :func:`keras_unc.metrics.validation.check_probs`.
  """
  return check_probs(probs)


def validate_probs_labels(probs, labels):
  """Validate ``(probs, labels)``; return ``(float64 [N, C], int64 [N])``."""
  return check_probs_labels(probs, labels)


def accuracy(probs, labels) -> float:
  """Top-1 accuracy: ``mean(argmax_c p_c == y)`` (ties -> lowest class index)."""
  probs, labels = validate_probs_labels(probs, labels)
  return float(np.mean(np.argmax(probs, axis=1) == labels))


def top_k_accuracy(probs, labels, k: int) -> float:
  """Top-k accuracy: fraction of examples whose label is among the k top classes.

  Class ``j`` ranks above the label ``y`` iff ``p_j > p_y`` or
  (``p_j == p_y`` and ``j < y``) - the same tie-break as ``argmax`` (lowest
  index wins), so ``top_k_accuracy(.., k=1) == accuracy(..)``.  An example is
  correct iff fewer than ``k`` classes rank above its label.

  Raises:
      ValueError: if ``k`` is not an integer in ``[1, C]``.
  """
  probs, labels = validate_probs_labels(probs, labels)
  n, c = probs.shape
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= c:
    raise ValueError(f"k must be an integer in [1, {c}], got {k!r}.")
  p_y = probs[np.arange(n), labels][:, None]
  idx = np.arange(c)[None, :]
  above = (probs > p_y) | ((probs == p_y) & (idx < labels[:, None]))
  return float(np.mean(above.sum(axis=1) < k))


class CalibrationBins(NamedTuple):
  """Per-bin statistics for a reliability diagram.

  Attributes:
      edges: ``[B + 1]`` bin edges, ``np.linspace(0, 1, B + 1)``.
      counts: ``[B]`` int64 number of examples per bin.
      accuracy: ``[B]`` fraction of correct top-1 predictions (NaN if empty).
      confidence: ``[B]`` mean top-class confidence (NaN if empty).
  """

  edges: np.ndarray
  counts: np.ndarray
  accuracy: np.ndarray
  confidence: np.ndarray


def _check_num_bins(num_bins):
  if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
    raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}.")
  return int(num_bins)


def _binned(probs, labels, num_bins):
  # No float64 copy of [N, C]: max/argmax in the input dtype, then the [N]
  # confidences are converted (same values as converting first).
  probs, labels = check_probs_labels(probs, labels, float64=False)
  num_bins = _check_num_bins(num_bins)
  conf = probs.max(axis=1).astype(np.float64)
  correct = (probs.argmax(axis=1) == labels).astype(np.float64)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  # The bin of conf is the number of inner edges strictly below it: the
  # right-closed interval (edges[b], edges[b+1]]; conf == 0 falls in bin 0 and
  # conf == 1 in bin num_bins - 1 (no clipping needed).
  bin_idx = np.searchsorted(edges[1:-1], conf, side="left")
  counts = np.bincount(bin_idx, minlength=num_bins).astype(np.int64)
  sum_correct = np.bincount(bin_idx, weights=correct, minlength=num_bins)
  sum_conf = np.bincount(bin_idx, weights=conf, minlength=num_bins)
  return edges, counts, sum_correct, sum_conf, conf.shape[0]


def calibration_bins(probs, labels, num_bins: int = 15) -> CalibrationBins:
  """Equal-width reliability-diagram bins of top-class confidence.

  Uses the binning of :func:`expected_calibration_error`.  Empty bins have
  ``count == 0`` and NaN accuracy/confidence.

  Reference: Guo, Pleiss, Sun & Weinberger (2017), "On Calibration of Modern
  Neural Networks", ICML.
  """
  edges, counts, sum_correct, sum_conf, _ = _binned(probs, labels, num_bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    acc = np.where(counts > 0, sum_correct / counts, np.nan)
    conf = np.where(counts > 0, sum_conf / counts, np.nan)
  return CalibrationBins(edges=edges, counts=counts, accuracy=acc, confidence=conf)


def expected_calibration_error(probs, labels, num_bins: int = 15) -> float:
  """Expected calibration error (ECE) with equal-width confidence bins.

  With top-class confidence ``c_i = max_c p_ic`` and correctness
  ``a_i = [argmax_c p_ic == y_i]``::

      ECE = sum_b (n_b / N) * | mean_{i in b} a_i - mean_{i in b} c_i |

  Bins are ``B = num_bins`` right-closed intervals ``(e_b, e_{b+1}]`` with
  ``e = np.linspace(0, 1, B + 1)``; confidence exactly 0 goes to the first
  bin and confidence 1.0 to the last.  A confidence equal to an edge (as a
  float64, e.g. ``0.2 == e[3]`` for ``B = 15``) belongs to the bin *below*
  it.  Empty bins contribute 0.

  Reference: Guo, Pleiss, Sun & Weinberger (2017), "On Calibration of Modern
  Neural Networks", ICML (Eq. 3); Naeini et al. (2015).
  """
  _, counts, sum_correct, sum_conf, n = _binned(probs, labels, num_bins)
  # (n_b / N) * |acc_b - conf_b| == |sum_correct_b - sum_conf_b| / N.
  return float(np.sum(np.abs(sum_correct - sum_conf)) / n)


def adaptive_calibration_error(probs, labels, num_bins: int = 15) -> float:
  """Top-label calibration error with equal-mass (adaptive) confidence bins.

  With top-class confidence ``c_i = max_c p_ic`` and correctness
  ``a_i = [argmax_c p_ic == y_i]``, the examples are sorted by ``c_i``
  (ascending, ``np.argsort(kind="stable")``: tied confidences keep their input
  order) and split with ``np.array_split`` into ``B = num_bins`` consecutive
  groups of nearly equal size (the first ``N mod B`` groups hold one example
  more).  Then::

      ACE = sum_b (n_b / N) * | mean_{i in b} a_i - mean_{i in b} c_i |

  Groups that are empty (``B > N``) contribute 0.  Unlike the equal-width
  :func:`expected_calibration_error`, every bin holds about ``N / B``
  examples, so the many high-confidence predictions of an accurate model are
  not pooled into one bin.

  Reference: Nixon, Dusenberry, Zhang, Jerfel & Tran (2019), "Measuring
  Calibration in Deep Learning", CVPR Workshops (adaptive binning).  Their
  "ACE" also averages over classes; this is the top-label variant (as the
  "AdaECE" of Mukhoti et al., 2020).

  Raises:
      ValueError: if ``num_bins`` is not a positive integer or on invalid inputs.
  """
  probs, labels = check_probs_labels(probs, labels, float64=False)
  num_bins = _check_num_bins(num_bins)
  conf = probs.max(axis=1).astype(np.float64)
  correct = (probs.argmax(axis=1) == labels).astype(np.float64)
  order = np.argsort(conf, kind="stable")
  total = 0.0
  for group in np.array_split(order, num_bins):
    # (n_b / N) * |acc_b - conf_b| == |sum_correct_b - sum_conf_b| / N.
    total += abs(correct[group].sum() - conf[group].sum())
  return float(total / conf.shape[0])


def classwise_calibration_error(probs, labels, num_bins: int = 15) -> float:
  """Class-wise ECE: the equal-width-bin calibration error of every class, averaged.

  For each class ``j`` the probabilities ``p_ij`` of all ``N`` examples are
  binned like :func:`expected_calibration_error` (``B = num_bins``
  right-closed intervals of ``np.linspace(0, 1, B + 1)``, 0 in the first bin,
  an edge value in the bin below it) and compared with the indicator
  ``[y_i == j]``::

      cwECE = (1/C) sum_j sum_b (n_jb / N) * | mean_{i in b} [y_i == j] - mean_{i in b} p_ij |

  Empty bins contribute 0.

  Reference: Kull, Perello-Nieto, Kängsepp, Silva Filho, Song & Flach (2019),
  "Beyond temperature scaling: Obtaining well-calibrated multiclass
  probabilities with Dirichlet calibration", NeurIPS (classwise-ECE).

  Raises:
      ValueError: if ``num_bins`` is not a positive integer or on invalid inputs.
  """
  probs, labels = check_probs_labels(probs, labels)
  num_bins = _check_num_bins(num_bins)
  n, c = probs.shape
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  bin_idx = np.searchsorted(edges[1:-1], probs, side="left")  # [N, C], as in `_binned`.
  flat = (bin_idx + num_bins * np.arange(c)[None, :]).ravel()  # Class-major bin ids.
  hits = np.zeros((n, c))
  hits[np.arange(n), labels] = 1.0
  sum_hits = np.bincount(flat, weights=hits.ravel(), minlength=num_bins * c)
  sum_probs = np.bincount(flat, weights=probs.ravel(), minlength=num_bins * c)
  per_class = np.abs(sum_hits - sum_probs).reshape(c, num_bins).sum(axis=1) / n
  return float(per_class.mean())


def nll(probs, labels, eps: float = NLL_EPS) -> float:
  """Mean negative log-likelihood ``-(1/N) sum_i log p_{i, y_i}`` (natural log).

  The true-class probability is clipped from below at ``eps`` (default
  ``1e-12``), so a zero probability contributes ``-log(1e-12) ~= 27.63``
  instead of infinity.  No upper clipping and no renormalisation of rows.
  """
  probs, labels = validate_probs_labels(probs, labels)
  if not (eps > 0):
    raise ValueError(f"eps must be > 0, got {eps!r}.")
  p_y = probs[np.arange(probs.shape[0]), labels]
  return float(-np.mean(np.log(np.maximum(p_y, eps))))


def brier_score(probs, labels) -> float:
  """Multi-class Brier score ``(1/N) sum_i sum_c (p_ic - [y_i == c])^2``.

  Reference: Brier (1950), "Verification of forecasts expressed in terms of
  probability", Monthly Weather Review.  Range ``[0, 2]``.
  """
  probs, labels = validate_probs_labels(probs, labels)
  diff = probs.copy()
  diff[np.arange(probs.shape[0]), labels] -= 1.0
  return float(np.mean(np.sum(diff * diff, axis=1)))


def msp_uncertainty(probs) -> np.ndarray:
  """Per-example uncertainty ``1 - max_c p_c`` (maximum softmax probability).

  Higher = more uncertain.  Reference: Hendrycks & Gimpel (2017), "A Baseline
  for Detecting Misclassified and Out-of-Distribution Examples in Neural
  Networks", ICLR.  Returns a float64 ``[N]`` array.
  """
  probs = validate_probs(probs)
  return 1.0 - probs.max(axis=1)


def entropy(probs) -> np.ndarray:
  """Per-example predictive entropy ``-sum_c p_c log p_c`` (nats; ``0 log 0 = 0``).

  Returns a float64 ``[N]`` array.
  """
  probs = validate_probs(probs)
  safe = np.where(probs > 0, probs, 1.0)
  return -np.sum(probs * np.log(safe), axis=1)


def calibration_auroc(probs, labels, uncertainty=None) -> float:
  """AUROC for separating wrong from correct top-1 predictions by uncertainty.

  Positive = misclassified (``argmax p != y``), score = ``uncertainty``
  (default :func:`msp_uncertainty`, ``1 - max p``); exact rank-based AUROC
  (ties count 1/2).  Reference: Hendrycks & Gimpel (2017), misclassification
  detection.

  Raises:
      ValueError: if ``uncertainty`` is not shape ``[N]`` or if all
          predictions are correct (or all wrong).
  """
  probs, labels = validate_probs_labels(probs, labels)
  wrong = probs.argmax(axis=1) != labels
  if uncertainty is None:
    uncertainty = 1.0 - probs.max(axis=1)
  else:
    uncertainty = check_scores(uncertainty, "uncertainty", n=probs.shape[0])
  n_wrong = int(wrong.sum())
  if n_wrong == 0 or n_wrong == wrong.shape[0]:
    raise ValueError(
      "calibration_auroc needs both correct and wrong predictions: got "
      f"{n_wrong} wrong and {wrong.shape[0] - n_wrong} correct."
    )
  return auroc(uncertainty, wrong)
