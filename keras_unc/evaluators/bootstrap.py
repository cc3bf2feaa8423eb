"""Bootstrap confidence intervals for every scalar the evaluators report.

`Bootstrap` re-runs each evaluator's `evaluate(predict)` `num_samples` times on a
`ResampledPredict`: a predict function that returns the round's predictions with the
examples of each split drawn with replacement. Every metric then gets
`<metric>/ci_low` and `<metric>/ci_high`, the percentile interval of its replicate
values (`keras_unc.metrics.percentile_interval`).
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
import zlib

import gin
import numpy as np

from keras_unc import metrics
from keras_unc.metrics.bootstrap import check_confidence
from keras_unc.metrics.validation import check_int

log = logging.getLogger(__name__)

CI_LOW, CI_HIGH = "ci_low", "ci_high"


def split_key(dataset, split, preprocess):
  """The stable name of one `(dataset, split, preprocess)`: a source's name, not its id."""
  name = dataset if isinstance(dataset, str) else getattr(dataset, "name", type(dataset).__name__)
  return (str(name), str(split), str(preprocess))


def split_stream(dataset, split, preprocess):
  """The bootstrap stream number of a split: CRC-32 of its stable name."""
  return zlib.crc32(repr(split_key(dataset, split, preprocess)).encode("utf-8"))


def resample(outputs, labels, idx):
  """Rows `idx` of every output with the labels' leading length, and of the labels."""
  labels = np.asarray(labels)
  n = labels.shape[0]
  drawn = {
    k: (np.asarray(v)[idx] if np.ndim(v) >= 1 and np.shape(v)[0] == n else v)
    for k, v in outputs.items()
  }
  return drawn, labels[idx]


class ResampledPredict:
  """A predict function returning the cached predictions of a split, resampled.

  Replicate `r` of split `(dataset, split, preprocess)` uses the indices
  `metrics.bootstrap_indices(N, seed, r, (split_stream(...),))`: the same rows for the
  outputs and labels of that split, independent rows for other splits, reproducible from
  the seed. Within a replicate a split is resampled once, so evaluators sharing it (and
  caches keyed on array identity, such as `OODEvaluator`'s Mahalanobis fit) see the same
  arrays.

  The underlying predictions are held for the whole bootstrap, including splits asked
  for with `cache=False` (which would otherwise be predicted again every replicate).

  Args:
    predict: the round's predict function (a `Predictor`).
    seed: non-negative integer seed.
  """

  def __init__(self, predict, seed=0):
    self.predict = predict
    self.seed = seed
    self.replicate = 0
    self._base = {}
    self._drawn = {}

  def start(self, replicate):
    """Begins replicate `replicate`: the next calls draw new indices."""
    self.replicate = replicate
    self._drawn.clear()

  def close(self):
    """Drops the held predictions."""
    self._base.clear()
    self._drawn.clear()

  def indices(self, dataset, split, preprocess, n):
    """The resampling indices of a split of `n` examples in the current replicate."""
    stream = (split_stream(dataset, split, preprocess),)
    return metrics.bootstrap_indices(n, self.seed, self.replicate, stream)

  def __call__(self, dataset, split, preprocess="", cache=True):
    key = (dataset if isinstance(dataset, str) else ("source", id(dataset)), split, preprocess)
    if key not in self._drawn:
      if key not in self._base:
        if cache:
          self._base[key] = self.predict(dataset, split, preprocess)
        else:
          self._base[key] = self.predict(dataset, split, preprocess, cache=False)
      outputs, labels = self._base[key]
      idx = self.indices(dataset, split, preprocess, len(labels))
      self._drawn[key] = resample(outputs, labels, idx)
    return self._drawn[key]


# The last wrapper, reused while the predict function is the same: wrappers of the predict
# function (e.g. `base.Prefixed`, keyed on its identity) then see one object every round.
_LAST = {}


def _resampled_predict(predict, seed):
  wrapper = _LAST.get("wrapper")
  if wrapper is None or wrapper.predict is not predict:
    wrapper = _LAST["wrapper"] = ResampledPredict(predict, seed)
  wrapper.seed = seed
  wrapper.close()
  return wrapper


def _is_scalar(value):
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


@gin.configurable("bootstrap")
class Bootstrap:
  """Percentile bootstrap intervals for every scalar metric of an evaluation round.

  Each of `num_samples` replicates re-runs every evaluator on a `ResampledPredict`
  (each split's examples drawn with replacement, outputs and labels together) and the
  interval of metric `m` is reported as `m/ci_low`, `m/ci_high`. Replicates in which a
  metric is NaN (or its evaluator raises `ValueError`, e.g. a class missing from a
  resample) are left out of that metric's interval. The cost is `num_samples` times the
  metric computation (not the network's predictions, which are computed once).

  Resampling treats each split's examples as independent draws; for metrics over pairs of
  examples of one split (retrieval's Recall@1, where a drawn duplicate is its own nearest
  neighbour) the interval is not meaningful.

  Args:
    num_samples: replicates per round; 0 (the default) turns the bootstrap off. gin:
      `bootstrap.num_samples = 1000`.
    confidence: interval level in (0, 1).
    seed: non-negative integer; the same seed gives the same intervals.
  """

  def __init__(self, num_samples=0, confidence=0.95, seed=0):
    self.num_samples = check_int(num_samples, "bootstrap.num_samples", minimum=0)
    self.confidence = check_confidence(confidence)
    self.seed = check_int(seed, "bootstrap.seed", minimum=0)

  def __call__(self, evaluators, predict, found):
    """`{f"{m}/ci_low": ..., f"{m}/ci_high": ...}` for every scalar `m` of `found`."""
    names = [k for k, v in found.items() if _is_scalar(v)]
    if self.num_samples == 0 or not names:
      return {}
    samples = {k: np.full(self.num_samples, np.nan) for k in names}
    resampled = _resampled_predict(predict, self.seed)
    failed = set()
    try:
      for r in range(self.num_samples):
        resampled.start(r)
        replicate = {}
        for evaluator in evaluators:
          try:
            replicate.update(evaluator.evaluate(resampled))
          except ValueError as e:
            if evaluator.name not in failed:
              failed.add(evaluator.name)
              message = (
                f"bootstrap: evaluator {evaluator.name!r} failed on resample {r} ({e}); its "
                "metrics are left out of the intervals for each resample on which it fails."
              )
              log.warning(message)
              warnings.warn(message, UserWarning, stacklevel=2)
        for k in names:
          value = replicate.get(k)
          if _is_scalar(value) and not math.isnan(value):
            samples[k][r] = float(value)
    finally:
      resampled.close()
    result = {}
    for k in names:
      low, high = metrics.percentile_interval(samples[k], self.confidence)
      result[f"{k}/{CI_LOW}"] = low
      result[f"{k}/{CI_HIGH}"] = high
    return result
