"""Streaming (batch-accumulated) versions of the exact metrics, as ``keras.metrics.Metric``.

Usable in ``compile(metrics=...)`` / ``fit`` / ``evaluate`` and in custom loops
under any ``tf.distribute`` strategy: the state is a few fixed-size sums held
in Keras metric variables (``synchronization="on_read"``, ``aggregation="sum"``),
so reading ``result()`` in cross-replica context sums every replica's state.
Updates are written with ``keras.ops`` (graph/XLA friendly).

``update_state(labels, probs, sample_weight=None)`` for the classification
metrics: ``labels`` are int class ids ``[B]`` (``[B, 1]`` and one-hot/soft
``[B, C]`` are reduced by squeeze/argmax), ``probs`` are ``[B, C]``
probabilities.  ``sample_weight`` (optional ``[B]``) weights each example's
contribution and count.  No input validation happens in the graph: use the exact
functions of :mod:`keras_unc.metrics` for checked, offline evaluation.

Precision: state has the metric ``dtype`` (default float32, TPU friendly).
Counts are exact up to ``2**24`` examples per accumulator in float32; pass
``dtype="float64"`` (CPU/GPU) for larger streams.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_unc.metrics.validation import check_int

__all__ = [
  "StreamingAUROC",
  "StreamingAccuracy",
  "StreamingBrier",
  "StreamingECE",
  "StreamingNLL",
]


def _int_labels(labels):
  labels = ops.convert_to_tensor(labels)
  if len(labels.shape) == 2:
    labels = ops.squeeze(labels, -1) if labels.shape[-1] == 1 else ops.argmax(labels, -1)
  return ops.cast(ops.reshape(labels, (-1,)), "int32")


def _weights(sample_weight, like, dtype):
  if sample_weight is None:
    return ops.ones_like(like, dtype=dtype)
  return ops.cast(ops.reshape(ops.convert_to_tensor(sample_weight), (-1,)), dtype)


def _float_down(edges, dtype):
  """Largest ``dtype`` value ``<= edge`` for each float64 edge.

  For ``x`` of that dtype, ``x > edge`` (exact comparison) iff
  ``x > _float_down(edge)``: binning float32 values against these thresholds
  reproduces the float64 binning of :func:`expected_calibration_error`.
  """
  cast = edges.astype(dtype)
  above = cast.astype(np.float64) > edges
  cast[above] = np.nextafter(cast[above], np.array(-np.inf, dtype=dtype))
  return cast


class _ClassificationMetric(keras.metrics.Metric):
  """Shared ``(labels, probs)`` preprocessing."""

  def _prepare(self, labels, probs, sample_weight):
    probs = ops.cast(probs, self.dtype)
    labels = _int_labels(labels)
    weights = _weights(sample_weight, probs[:, 0], self.dtype)
    return labels, probs, weights


class StreamingECE(_ClassificationMetric):
  """Expected calibration error from exact per-bin sums.

  State: per bin the (weighted) count, sum of top-class confidence and sum of
  correctness, with the bins of :func:`expected_calibration_error`
  (``num_bins`` right-closed equal-width bins, confidence 0 in the first).
  ``result = sum_b |correct_b - conf_b| / N`` equals the exact function on the
  same float32 data up to float32 rounding of the sums (bin assignment is
  exact: thresholds are the float64 edges rounded down to the state dtype).
  """

  def __init__(self, num_bins=15, name="ece", dtype=None):
    super().__init__(name=name, dtype=dtype)
    self.num_bins = check_int(num_bins, "num_bins")
    edges = np.linspace(0.0, 1.0, self.num_bins + 1)[1:-1]
    self._thresholds = _float_down(edges, np.dtype(self.dtype))
    self.counts = self.add_variable((self.num_bins,), "zeros", name="counts")
    self.conf_sums = self.add_variable((self.num_bins,), "zeros", name="conf_sums")
    self.correct_sums = self.add_variable((self.num_bins,), "zeros", name="correct_sums")

  def update_state(self, labels, probs, sample_weight=None):
    labels, probs, w = self._prepare(labels, probs, sample_weight)
    conf = ops.max(probs, axis=-1)
    correct = ops.cast(ops.equal(ops.cast(ops.argmax(probs, axis=-1), "int32"), labels), self.dtype)
    thresholds = ops.convert_to_tensor(self._thresholds, dtype=self.dtype)
    bins = ops.sum(ops.cast(ops.expand_dims(conf, -1) > thresholds, "int32"), axis=-1)
    self.counts.assign_add(ops.segment_sum(w, bins, num_segments=self.num_bins))
    self.conf_sums.assign_add(ops.segment_sum(w * conf, bins, num_segments=self.num_bins))
    self.correct_sums.assign_add(ops.segment_sum(w * correct, bins, num_segments=self.num_bins))

  def result(self):
    return ops.divide(ops.sum(ops.abs(self.correct_sums - self.conf_sums)), ops.sum(self.counts))

  def get_config(self):
    return {**super().get_config(), "num_bins": self.num_bins}


class StreamingNLL(_ClassificationMetric):
  """Mean ``-log max(p_y, 1e-12)``, as :func:`nll`."""

  def __init__(self, eps=1e-12, name="nll", dtype=None):
    super().__init__(name=name, dtype=dtype)
    self.eps = float(eps)
    self.total = self.add_variable((), "zeros", name="total")
    self.count = self.add_variable((), "zeros", name="count")

  def update_state(self, labels, probs, sample_weight=None):
    labels, probs, w = self._prepare(labels, probs, sample_weight)
    p_y = ops.take_along_axis(probs, ops.expand_dims(labels, -1), axis=-1)[:, 0]
    self.total.assign_add(ops.sum(-w * ops.log(ops.maximum(p_y, self.eps))))
    self.count.assign_add(ops.sum(w))

  def result(self):
    return ops.divide(self.total, self.count)

  def get_config(self):
    return {**super().get_config(), "eps": self.eps}


class StreamingBrier(_ClassificationMetric):
  """Mean ``sum_c (p_c - [y == c])^2``, as :func:`brier_score`."""

  def __init__(self, name="brier", dtype=None):
    super().__init__(name=name, dtype=dtype)
    self.total = self.add_variable((), "zeros", name="total")
    self.count = self.add_variable((), "zeros", name="count")

  def update_state(self, labels, probs, sample_weight=None):
    labels, probs, w = self._prepare(labels, probs, sample_weight)
    diff = probs - ops.one_hot(labels, ops.shape(probs)[-1], dtype=self.dtype)
    self.total.assign_add(ops.sum(w * ops.sum(diff * diff, axis=-1)))
    self.count.assign_add(ops.sum(w))

  def result(self):
    return ops.divide(self.total, self.count)


class StreamingAccuracy(_ClassificationMetric):
  """Top-1 accuracy ``mean [argmax p == y]`` (argmax ties: lowest index)."""

  def __init__(self, name="accuracy", dtype=None):
    super().__init__(name=name, dtype=dtype)
    self.correct = self.add_variable((), "zeros", name="correct")
    self.count = self.add_variable((), "zeros", name="count")

  def update_state(self, labels, probs, sample_weight=None):
    labels, probs, w = self._prepare(labels, probs, sample_weight)
    pred = ops.cast(ops.argmax(probs, axis=-1), "int32")
    self.correct.assign_add(ops.sum(w * ops.cast(ops.equal(pred, labels), self.dtype)))
    self.count.assign_add(ops.sum(w))

  def result(self):
    return ops.divide(self.correct, self.count)


class StreamingAUROC(keras.metrics.Metric):
  """AUROC from fixed-bin score histograms of positives and negatives.

  ``update_state(positives, scores, sample_weight=None)``: ``positives`` is
  0/1 or bool ``[B]`` (e.g. "is OOD", "is wrong"), ``scores`` ``[B]`` with
  higher = more positive.  Each score goes to one of ``num_bins`` bins;
  ``result()`` is the trapezoidal ROC area of the two histograms, i.e. the
  exact AUROC of the binned scores with pairs inside one bin counted 1/2::

      AUROC_hist = sum_b P_b (N_<b + N_b / 2) / (n_pos n_neg)

  Binning: ``"logit"`` (default) puts the ``num_bins - 1`` inner edges at
  ``lo + (hi - lo) * sigmoid(t)``, ``t`` evenly spaced in ``[-23, 23]``, so
  bins are dense near both ends of ``score_range = (lo, hi)`` (default
  ``(0, 1)``) where peaked max-softmax scores (``max p`` or ``1 - max p``)
  live; ``"linear"`` uses equal widths.  Scores outside the range fall in the
  first/last bin.

  Error bound: only pairs sharing a bin are approximated, each off by at most
  1/2, so ``|AUROC_hist - AUROC| <= 1/2 sum_b P_b N_b / (n_pos n_neg)`` (see
  :meth:`error_bound`).  With the default 16384 logit bins a bin is 0.0028
  wide in logit units, so if one class has a logit-space density below
  ``rho`` per unit the bound is ``<= 0.0014 rho``: below 1e-3 for any
  score whose logit spreads at least as a unit-variance Gaussian (rho = 0.4
  gives 5.6e-4), and the actual error is typically far smaller (signed
  within-bin errors cancel).  Scores within ``sigmoid(-23) ~ 1e-10`` of the
  range ends (or outside it) share the two end bins.
  ``keras.metrics.AUC(num_thresholds=200)`` puts 200 evenly spaced thresholds on
  ``[0, 1]`` and misses such scores badly.

  With a single class seen, ``result()`` is NaN (AUROC undefined).
  """

  LOGIT_LIMIT = 23.0

  def __init__(
    self, num_bins=16384, binning="logit", score_range=(0.0, 1.0), name="auroc", dtype=None
  ):
    super().__init__(name=name, dtype=dtype)
    check_int(num_bins, "num_bins", minimum=2)
    if binning not in ("logit", "linear"):
      raise ValueError(f"binning must be 'logit' or 'linear', got {binning!r}.")
    lo, hi = (float(v) for v in score_range)
    if not lo < hi:
      raise ValueError(f"score_range must be (lo, hi) with lo < hi, got {score_range!r}.")
    self.num_bins, self.binning, self.score_range = int(num_bins), binning, (lo, hi)
    if binning == "logit":
      t = np.linspace(-self.LOGIT_LIMIT, self.LOGIT_LIMIT, self.num_bins - 1)
      edges = lo + (hi - lo) / (1.0 + np.exp(-t))
    else:
      edges = np.linspace(lo, hi, self.num_bins + 1)[1:-1]
    self._edges = edges.astype(np.dtype(self.dtype))
    self.pos_hist = self.add_variable((self.num_bins,), "zeros", name="pos_hist")
    self.neg_hist = self.add_variable((self.num_bins,), "zeros", name="neg_hist")

  def update_state(self, positives, scores, sample_weight=None):
    scores = ops.reshape(ops.cast(scores, self.dtype), (-1,))
    pos = ops.reshape(ops.cast(positives, self.dtype), (-1,))
    w = _weights(sample_weight, scores, self.dtype)
    bins = ops.searchsorted(
      ops.convert_to_tensor(self._edges, dtype=self.dtype), scores, side="left"
    )
    self.pos_hist.assign_add(ops.segment_sum(w * pos, bins, num_segments=self.num_bins))
    self.neg_hist.assign_add(ops.segment_sum(w * (1.0 - pos), bins, num_segments=self.num_bins))

  def result(self):
    # Cumulated counts stay exact integers in float32 up to 2**24.
    below = ops.cumsum(self.neg_hist) - self.neg_hist
    area = ops.sum(self.pos_hist * (below + 0.5 * self.neg_hist))
    return ops.divide(area, ops.sum(self.pos_hist) * ops.sum(self.neg_hist))

  def error_bound(self):
    """Upper bound ``1/2 sum_b P_b N_b / (n_pos n_neg)`` on the binning error."""
    return ops.divide(
      0.5 * ops.sum(self.pos_hist * self.neg_hist), ops.sum(self.pos_hist) * ops.sum(self.neg_hist)
    )

  def get_config(self):
    return {
      **super().get_config(),
      "num_bins": self.num_bins,
      "binning": self.binning,
      "score_range": self.score_range,
    }
