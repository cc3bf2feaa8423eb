"""Percentile bootstrap: hand-written NumPy loops with the documented generator."""

import numpy as np
import pytest

from keras_unc.metrics import (
  accuracy,
  bootstrap_indices,
  percentile_bootstrap,
  percentile_interval,
)


def _case(seed=0, n=80, c=3):
  rng = np.random.default_rng(seed)
  probs = rng.dirichlet(np.ones(c), size=n)
  labels = rng.integers(0, c, size=n)
  return probs, labels


def test_indices_follow_the_documented_generator():
  got = bootstrap_indices(50, 7, 3, (11,))
  want = np.random.default_rng([7, 11, 3]).integers(0, 50, size=50)
  np.testing.assert_array_equal(got, want)
  assert not np.array_equal(got, bootstrap_indices(50, 7, 4, (11,)))  # Next replicate.
  assert not np.array_equal(got, bootstrap_indices(50, 7, 3, (12,)))  # Other stream.
  assert got.min() >= 0 and got.max() < 50


def test_percentile_bootstrap_matches_a_hand_loop():
  probs, labels = _case()
  low, high = percentile_bootstrap(accuracy, (probs, labels), num_samples=300, seed=5)
  values = []
  for r in range(300):
    idx = np.random.default_rng([5, r]).integers(0, 80, size=80)
    values.append(np.mean(probs[idx].argmax(1) == labels[idx]))
  want = np.percentile(values, [2.5, 97.5])
  assert (low, high) == pytest.approx(tuple(want), abs=1e-15)
  point = accuracy(probs, labels)
  assert low < point < high
  # A 50% interval is inside the 95% one.
  low50, high50 = percentile_bootstrap(accuracy, (probs, labels), 300, confidence=0.5, seed=5)
  assert low <= low50 < high50 <= high


def test_percentile_interval_leaves_out_nan():
  samples = [np.nan, 1.0, 2.0, np.nan, 3.0, 4.0, 5.0]
  assert percentile_interval(samples, 0.5) == pytest.approx((2.0, 4.0))
  low, high = percentile_interval([np.nan, np.nan])
  assert np.isnan(low) and np.isnan(high)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.2, True, "0.95"])
def test_bad_confidence(bad):
  with pytest.raises(ValueError, match=r"confidence must be a number in \(0, 1\)"):
    percentile_interval([1.0, 2.0], bad)


def test_bad_arguments_are_named():
  probs, labels = _case()
  with pytest.raises(ValueError, match="num_samples must be a positive integer"):
    percentile_bootstrap(accuracy, (probs, labels), num_samples=0)
  with pytest.raises(ValueError, match="share their first"):
    percentile_bootstrap(accuracy, (probs, labels[:10]))
  with pytest.raises(ValueError, match="seed must be an integer >= 0"):
    percentile_bootstrap(accuracy, (probs, labels), 10, seed=-1)
  with pytest.raises(ValueError, match="non-empty sequence"):
    percentile_bootstrap(accuracy, ())
