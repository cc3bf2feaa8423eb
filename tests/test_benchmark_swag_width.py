"""benchmarks/swag_width.py: the posterior-width numbers against NumPy by hand."""

import importlib.util
import os
import types

import numpy as np

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "swag_width.py")
_spec = importlib.util.spec_from_file_location("swag_width_benchmark", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_posterior_width_by_hand():
  rng = np.random.default_rng(0)
  w = [rng.normal(size=(3, 2)), rng.normal(size=(4,))]
  sq = [x**2 + rng.uniform(0.01, 0.1, x.shape) for x in w]
  k = 5
  devs = [rng.normal(size=(k, *x.shape)) for x in w]
  state = types.SimpleNamespace(
    means=w,
    sq_means=sq,
    devs=devs,
    count=types.SimpleNamespace(numpy=lambda: 3.0),  # 3 of K = 5 columns filled.
    max_num_models=k,
    var_clamp=1e-30,
  )
  collected, rel_sigma, rel_lowrank = bench.posterior_width(state)
  mean = np.concatenate([x.ravel() for x in w])
  var = np.concatenate([(s - x**2).ravel() for s, x in zip(sq, w)])
  used = np.concatenate([d[:3].reshape(3, -1) for d in devs], axis=1)
  assert collected == 3
  np.testing.assert_allclose(rel_sigma, np.sqrt(var.sum()) / np.linalg.norm(mean), rtol=1e-12)
  want = np.sqrt((used**2).sum() / (k - 1)) / np.linalg.norm(mean)
  np.testing.assert_allclose(rel_lowrank, want, rtol=1e-12)
