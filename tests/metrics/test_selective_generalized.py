"""AUGRC and risk at a coverage against per-example loops and brute-force tie averaging."""

import itertools
import math

import numpy as np
import pytest

from keras_unc.metrics import accuracy, augrc, aurc, risk_at_coverage
from tests.metrics.test_selective import _random_case as _case


def _wrong(probs, labels):
  return [int(np.argmax(row)) != int(y) for row, y in zip(probs, labels)]


def _augrc_loop(wrong, order):
  """(1/N) sum_k (errors among the first k of `order`) / N."""
  n = len(order)
  total, errors = 0.0, 0
  for i in order:
    errors += wrong[i]
    total += errors / n
  return total / n


def _risk_loop(wrong, order, coverage):
  k = math.ceil(round(coverage * len(order), 9))
  return sum(wrong[i] for i in order[:k]) / k


def _all_orders(unc):
  """Every order of the examples consistent with increasing uncertainty."""
  for perm in itertools.permutations(range(len(unc))):
    if all(unc[perm[i]] <= unc[perm[i + 1]] for i in range(len(perm) - 1)):
      yield perm


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_augrc_no_ties_matches_loop(seed):
  probs, labels, unc = _case(seed, 50)
  order = sorted(range(50), key=lambda i: unc[i])
  want = _augrc_loop(_wrong(probs, labels), order)
  assert augrc(probs, labels, unc) == pytest.approx(want, abs=1e-12)


def test_augrc_default_uncertainty_is_msp():
  probs, labels, _ = _case(3, 30)
  order = sorted(range(30), key=lambda i: 1.0 - probs[i].max())
  assert augrc(probs, labels) == pytest.approx(_augrc_loop(_wrong(probs, labels), order))


@pytest.mark.parametrize("seed", [0, 4])
def test_ties_are_averaged_over_every_order(seed):
  probs, labels, _ = _case(seed, 7)
  unc = np.array([0.3, 0.1, 0.3, 0.3, 0.1, 0.5, 0.5])
  wrong = _wrong(probs, labels)
  orders = list(_all_orders(unc))
  want = np.mean([_augrc_loop(wrong, o) for o in orders])
  assert augrc(probs, labels, unc) == pytest.approx(want, abs=1e-12)
  for coverage in (0.3, 0.5, 4 / 7, 0.9, 1.0):
    want = np.mean([_risk_loop(wrong, o, coverage) for o in orders])
    assert risk_at_coverage(probs, labels, coverage, unc) == pytest.approx(want, abs=1e-12)


def test_augrc_relations():
  probs, labels, unc = _case(5, 40)
  err = 1.0 - accuracy(probs, labels)
  # A perfect ranking (all wrong last) beats a reversed one.
  wrong = np.array(_wrong(probs, labels))
  assert augrc(probs, labels, wrong.astype(float)) < augrc(probs, labels, -wrong.astype(float))
  # The trapezoid from (0, 0) (Traub et al.'s integration) is smaller by err / (2N).
  order = np.argsort(unc, kind="stable")
  g = np.concatenate(([0.0], np.cumsum(wrong[order]) / 40))
  trapezoid = float(np.sum((g[1:] + g[:-1]) / 2) / 40)
  assert augrc(probs, labels, unc) - trapezoid == pytest.approx(err / 80, abs=1e-12)
  # Generalized risk <= selective risk at every coverage, so AUGRC <= AURC.
  assert augrc(probs, labels, unc) <= aurc(probs, labels, unc)


def test_risk_at_coverage_counts_ceil_and_full_coverage_is_error():
  probs, labels, unc = _case(6, 10)
  wrong = _wrong(probs, labels)
  order = sorted(range(10), key=lambda i: unc[i])
  # 0.7 * 10 is 7.000000000000001 in floats: 7 examples are kept, not 8.
  assert risk_at_coverage(probs, labels, 0.7, unc) == pytest.approx(
    sum(wrong[i] for i in order[:7]) / 7
  )
  assert risk_at_coverage(probs, labels, 0.71, unc) == pytest.approx(
    sum(wrong[i] for i in order[:8]) / 8
  )
  assert risk_at_coverage(probs, labels, 0.01, unc) == float(wrong[order[0]])
  assert risk_at_coverage(probs, labels, 1.0, unc) == pytest.approx(1 - accuracy(probs, labels))
  assert risk_at_coverage(probs, labels, 1, unc) == pytest.approx(1 - accuracy(probs, labels))


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), True, "0.8", None])
def test_bad_coverage(bad):
  probs, labels, unc = _case(0, 10)
  with pytest.raises(ValueError, match=r"coverage must be a number in \(0, 1\]"):
    risk_at_coverage(probs, labels, bad, unc)


@pytest.mark.parametrize("fn", [augrc, lambda p, y, u: risk_at_coverage(p, y, 0.5, u)])
def test_bad_uncertainty(fn):
  probs, labels, unc = _case(0, 10)
  with pytest.raises(ValueError, match="uncertainty must have shape"):
    fn(probs, labels, unc[:4])
  with pytest.raises(ValueError, match="non-finite"):
    fn(probs, labels, np.full(10, np.nan))
