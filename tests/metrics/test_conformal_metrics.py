"""Conformal-set metrics against hand-computed values, and their input errors."""

import numpy as np
import pytest

from keras_unc import metrics
from keras_unc.metrics import conformal

# Four examples, three classes: sizes 1, 2, 3, 0; labels covered: yes, no, yes, no.
SETS = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0]], bool)
LABELS = np.array([0, 2, 1, 0])


def test_coverage_and_mean_set_size_by_hand():
  assert conformal.coverage(SETS, LABELS) == 0.5
  assert conformal.mean_set_size(SETS) == 1.5
  assert conformal.coverage(SETS.astype(int), LABELS) == 0.5  # 0/1 masks work too.
  assert metrics.coverage is conformal.coverage and metrics.sscv is conformal.sscv


def test_size_stratified_coverage_default_and_custom_bins():
  found = conformal.size_stratified_coverage(SETS, LABELS)
  assert found["bins"] == [(0, 0), (1, 1), (2, 2), (3, 3)]
  np.testing.assert_array_equal(found["count"], [1, 1, 1, 1])
  np.testing.assert_array_equal(found["coverage"], [0.0, 1.0, 0.0, 1.0])
  found = conformal.size_stratified_coverage(SETS, LABELS, size_bins=[(0, 1), (2, 3), (4, 9)])
  np.testing.assert_array_equal(found["count"], [2, 2, 0])
  np.testing.assert_array_equal(found["coverage"][:2], [0.5, 0.5])
  assert np.isnan(found["coverage"][2])


def test_sscv_is_the_worst_bin_deviation():
  # Default bins: coverages 0, 1, 0, 1 -> worst |c - 0.9| = 0.9.
  assert conformal.sscv(SETS, LABELS, 0.1) == pytest.approx(0.9)
  # Two bins of coverage 0.5 (the empty third bin is skipped): |0.5 - 0.8| = 0.3.
  assert conformal.sscv(SETS, LABELS, 0.2, size_bins=[(0, 1), (2, 3), (4, 9)]) == pytest.approx(0.3)


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: conformal.coverage(SETS[0], LABELS), "2-D"),
    (lambda: conformal.coverage(SETS * 0.5, LABELS), "only 0/1"),
    (lambda: conformal.coverage(SETS, LABELS[:3]), "same length"),
    (lambda: conformal.coverage(SETS, np.array([0, 1, 2, 3])), "out-of-range"),
    (lambda: conformal.mean_set_size(np.zeros((0, 3), bool)), "non-empty"),
    (lambda: conformal.sscv(SETS, LABELS, 1.5), "alpha"),
    (lambda: conformal.size_stratified_coverage(SETS, LABELS, [(0, 2), (2, 3)]), "overlap"),
    (
      lambda: conformal.size_stratified_coverage(SETS, LABELS, [(1, 3)]),
      r"cover the set sizes \[0\]",
    ),
    (lambda: conformal.size_stratified_coverage(SETS, LABELS, [(2, 1)]), "low <= high"),
    (lambda: conformal.size_stratified_coverage(SETS, LABELS, [3]), "pairs"),
  ],
)
def test_bad_inputs_are_refused_with_a_clear_error(call, match):
  with pytest.raises(ValueError, match=match):
    call()
