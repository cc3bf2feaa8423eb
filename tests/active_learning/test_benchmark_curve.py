"""The benchmark's labels-to-target read-off on a piecewise-linear accuracy curve."""

import importlib.util
import os

import pytest

_PATH = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
  "benchmarks",
  "active_learning.py",
)
_spec = importlib.util.spec_from_file_location("al_benchmark", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_labels_to_reach_interpolates_first_crossing():
  labels, acc = [20, 60, 100, 140], [0.5, 0.7, 0.65, 0.9]
  assert bench.labels_to_reach(labels, acc, 0.6) == pytest.approx(40.0)
  # 0.8 is crossed first between 100 (0.65) and 140 (0.9): 100 + 0.15 / 0.25 * 40.
  assert bench.labels_to_reach(labels, acc, 0.8) == pytest.approx(124.0)
  assert bench.labels_to_reach(labels, acc, 0.4) == 20.0
  assert bench.labels_to_reach(labels, acc, 0.9) == pytest.approx(140.0)
  assert bench.labels_to_reach(labels, acc, 0.95) is None
