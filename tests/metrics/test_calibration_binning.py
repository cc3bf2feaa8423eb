"""Adaptive (equal-mass) ECE and class-wise ECE against per-example Python loops."""

import numpy as np
import pytest

from keras_unc.metrics import (
  adaptive_calibration_error,
  classwise_calibration_error,
  expected_calibration_error,
)


def _case(seed, n=97, c=4, temperature=2.0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(scale=temperature, size=(n, c))
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  probs /= probs.sum(axis=1, keepdims=True)
  labels = rng.integers(0, c, size=n)
  return probs, labels


def _bin_of(p, num_bins):
  """Right-closed equal-width bin of one probability, by scanning the edges."""
  edges = [b / num_bins for b in range(num_bins + 1)]
  for b in range(num_bins):
    if p <= edges[b + 1] or b == num_bins - 1:
      return b
  raise AssertionError("unreachable")


def _ace_loop(probs, labels, num_bins):
  n = len(labels)
  conf = [float(max(row)) for row in probs]
  correct = [float(int(np.argmax(row)) == int(y)) for row, y in zip(probs, labels)]
  order = sorted(range(n), key=lambda i: conf[i])  # Python's sort is stable.
  base, extra = divmod(n, num_bins)
  total, start = 0.0, 0
  for b in range(num_bins):
    size = base + (1 if b < extra else 0)
    group = order[start : start + size]
    start += size
    if group:
      acc = sum(correct[i] for i in group) / size
      avg = sum(conf[i] for i in group) / size
      total += size / n * abs(acc - avg)
  assert start == n
  return total


def _cwece_loop(probs, labels, num_bins):
  n, c = probs.shape
  per_class = []
  for j in range(c):
    hits, mass, count = [0.0] * num_bins, [0.0] * num_bins, [0] * num_bins
    for i in range(n):
      b = _bin_of(float(probs[i, j]), num_bins)
      hits[b] += float(labels[i] == j)
      mass[b] += float(probs[i, j])
      count[b] += 1
    err = 0.0
    for b in range(num_bins):
      if count[b]:
        err += count[b] / n * abs(hits[b] / count[b] - mass[b] / count[b])
    per_class.append(err)
  return sum(per_class) / c


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_bins", [1, 4, 15, 200])
def test_adaptive_ece_matches_loop(seed, num_bins):
  probs, labels = _case(seed)
  got = adaptive_calibration_error(probs, labels, num_bins)
  assert got == pytest.approx(_ace_loop(probs, labels, num_bins), abs=1e-12)


def test_adaptive_ece_special_cases():
  probs, labels = _case(5, n=40)
  conf = probs.max(1)
  correct = (probs.argmax(1) == labels).astype(float)
  # One bin: |accuracy - mean confidence|; N bins: mean per-example |a_i - c_i|.
  assert adaptive_calibration_error(probs, labels, 1) == pytest.approx(
    abs(correct.mean() - conf.mean())
  )
  assert adaptive_calibration_error(probs, labels, 40) == pytest.approx(
    np.mean(np.abs(correct - conf))
  )
  # Equal-mass bins differ from equal-width bins on the same data.
  assert adaptive_calibration_error(probs, labels, 5) != pytest.approx(
    expected_calibration_error(probs, labels, 5)
  )


def test_adaptive_ece_bins_are_equal_mass():
  # Ten confidences; two bins hold five each: {0.5 x 5 right} and {0.9 x 5, 3 right}.
  probs = np.array([[0.5, 0.5]] * 5 + [[0.9, 0.1]] * 5)
  labels = np.array([0] * 5 + [0, 0, 0, 1, 1])
  # Bin 1: |1.0 - 0.5| = 0.5; bin 2: |0.6 - 0.9| = 0.3; each weighted 1/2.
  assert adaptive_calibration_error(probs, labels, 2) == pytest.approx(0.4)


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("num_bins", [1, 3, 15])
def test_classwise_ece_matches_loop(seed, num_bins):
  probs, labels = _case(seed, n=60, c=3)
  got = classwise_calibration_error(probs, labels, num_bins)
  assert got == pytest.approx(_cwece_loop(probs, labels, num_bins), abs=1e-12)


def test_classwise_ece_edges_and_known_value():
  # p = 0.2 is an edge of 5 bins: it belongs to the bin below, (0, 0.2].
  probs = np.array([[0.2, 0.8], [0.2, 0.8], [1.0, 0.0], [0.0, 1.0]])
  labels = np.array([0, 1, 0, 1])
  assert classwise_calibration_error(probs, labels, 5) == pytest.approx(
    _cwece_loop(probs, labels, 5)
  )
  # Class 0: bin [0, .2] holds 0.2, 0.2, 0.0 with one hit -> |1 - 0.4| / 4 = 0.15; 1.0 is
  # exact. Class 1: bin (.6, .8] holds two 0.8s, one hit -> |1 - 1.6| / 4 = 0.15. Mean 0.15.
  assert classwise_calibration_error(probs, labels, 5) == pytest.approx(0.15)
  # Perfectly calibrated one-hot predictions: 0.
  assert classwise_calibration_error(np.eye(3)[[0, 2, 1]], [0, 2, 1]) == 0.0


@pytest.mark.parametrize("fn", [adaptive_calibration_error, classwise_calibration_error])
@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "15"])
def test_bad_num_bins(fn, bad):
  probs, labels = _case(0, n=8)
  with pytest.raises(ValueError, match="num_bins must be a positive integer"):
    fn(probs, labels, bad)


@pytest.mark.parametrize("fn", [adaptive_calibration_error, classwise_calibration_error])
def test_bad_inputs_are_named(fn):
  probs, labels = _case(0, n=8)
  with pytest.raises(ValueError, match="same length"):
    fn(probs, labels[:5])
  with pytest.raises(ValueError, match="logits"):
    fn(probs * 3, labels)
