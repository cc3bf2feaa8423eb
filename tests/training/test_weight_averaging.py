"""Weight averaging (`keras_unc.training.weight_average`, `averaging`): SWAG's collection and
sampling against NumPy transcriptions of wjmaddox/swa_gaussian, SWA and EMA averages, the
BatchNorm recomputation (`bn_update`) and the bad-input errors.
"""

import math

import gin
import keras
import numpy as np
import pytest

from keras_unc import methods
from keras_unc.training import averaging, weight_average

SHAPES = [(3, 2), (4,)]


def _state(kind, **kwargs):
  variables = [keras.Variable(np.zeros(s, np.float32)) for s in SHAPES]
  state = weight_average.WeightAverage(variables, kind, **kwargs)
  return variables, state


def _run(variables, state, steps, start_step, seed=0):
  """Assigns random weights before each step 1..steps and updates; returns the weights."""
  state.start_step = start_step
  rng = np.random.default_rng(seed)
  seen = []
  for step in range(1, steps + 1):
    ws = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    for v, w in zip(variables, ws):
      v.assign(w)
    state.update(step)
    seen.append((step, ws))
  return seen


def _reference_collect(models, max_num_models):
  """swa_gaussian `swag/posteriors/swag.py::SWAG.collect_model`, per parameter, in NumPy:
  running moments; `dev = w - mean` (the mean including w) appended as a row of
  `cov_mat_sqrt`, the first row dropped when more than `max_num_models` are stored.
  """
  n = 0
  mean = [np.zeros(s) for s in SHAPES]
  sq = [np.zeros(s) for s in SHAPES]
  cov = [np.zeros((0, int(np.prod(s)))) for s in SHAPES]
  for ws in models:
    for i, w in enumerate(ws):
      w = w.astype(np.float64)
      mean[i] = mean[i] * n / (n + 1.0) + w / (n + 1.0)
      sq[i] = sq[i] * n / (n + 1.0) + w**2 / (n + 1.0)
      cov[i] = np.concatenate([cov[i], (w - mean[i]).reshape(1, -1)], axis=0)
      if n + 1 > max_num_models:
        cov[i] = cov[i][1:]
    n += 1
  return mean, sq, cov


def _reference_sample(mean, sq, cov, z1, z2, scale, max_num_models, var_clamp=1e-30):
  """swa_gaussian `SWAG.sample_fullrank(scale, cov=True)` with the normal draws given."""
  mean = np.concatenate([m.ravel() for m in mean])
  sq = np.concatenate([s.ravel() for s in sq])
  var = np.clip(sq - mean**2, var_clamp, None)
  var_sample = np.sqrt(var) * z1
  cov_mat_sqrt = np.concatenate(cov, axis=1)
  cov_sample = cov_mat_sqrt.T @ z2 / (max_num_models - 1) ** 0.5
  return mean + scale**0.5 * (var_sample + cov_sample)


def test_swag_collect_and_sample_match_swa_gaussian():
  variables, state = _state("swag", every=2, max_num_models=3)
  seen = _run(variables, state, steps=13, start_step=2)
  collected = [ws for step, ws in seen if step > 2 and (step - 2) % 2 == 0]  # 4, 6, ..., 12
  assert len(collected) == 5 and float(state.count.numpy()) == 5  # The K=3 window rolled.
  mean, sq, cov = _reference_collect(collected, 3)
  for i in range(len(SHAPES)):
    np.testing.assert_allclose(np.asarray(state.means[i]), mean[i], atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.sq_means[i]), sq[i], atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.devs[i]).reshape(3, -1), cov[i], atol=1e-6)
  ours = np.concatenate([w.ravel() for w in state.sample(np.random.default_rng(7))])
  rng = np.random.default_rng(7)  # Our draw order: z1 over all weights, then z2.
  z1 = rng.standard_normal(sum(int(np.prod(s)) for s in SHAPES))
  z2 = rng.standard_normal(3)
  ref = _reference_sample(mean, sq, cov, z1, z2, 0.5, 3)
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  # scale = 0.5 is the paper's mean + sigma z1 / sqrt(2) + D z2 / sqrt(2 (K - 1)).
  flat_mean = np.concatenate([m.ravel() for m in mean])
  sigma = np.sqrt(np.clip(np.concatenate([s.ravel() for s in sq]) - flat_mean**2, 1e-30, None))
  paper = flat_mean + sigma * z1 / math.sqrt(2) + np.concatenate(cov, 1).T @ z2 / math.sqrt(4)
  np.testing.assert_allclose(ours, paper, atol=1e-5)


def test_swag_sample_while_window_not_full_uses_collected_rows():
  variables, state = _state("swag", every=1, max_num_models=4)
  seen = _run(variables, state, steps=3, start_step=1)  # Collects steps 2, 3.
  mean, sq, cov = _reference_collect([ws for _, ws in seen[1:]], 4)
  assert cov[0].shape[0] == 2
  ours = np.concatenate([w.ravel() for w in state.sample(np.random.default_rng(1))])
  rng = np.random.default_rng(1)
  z1, z2 = rng.standard_normal(10), rng.standard_normal(2)
  np.testing.assert_allclose(ours, _reference_sample(mean, sq, cov, z1, z2, 0.5, 4), atol=1e-5)


def test_swa_and_ema_averages_match_numpy():
  variables, state = _state("swa", every=3)
  seen = _run(variables, state, steps=10, start_step=1)  # Collects 4, 7, 10.
  expected = [np.mean([ws[i] for step, ws in seen if step in (4, 7, 10)], 0) for i in range(2)]
  for got, want in zip(state.averaged(), expected):
    np.testing.assert_allclose(got, want, atol=1e-6)
  variables, state = _state("ema", momentum=0.9)
  seen = _run(variables, state, steps=6, start_step=2)  # Every step after 2; first copies.
  ema = [w.astype(np.float64) for w in seen[2][1]]
  for _, ws in seen[3:]:
    ema = [0.9 * e + 0.1 * w for e, w in zip(ema, ws)]
  for got, want in zip(state.averaged(), ema):
    np.testing.assert_allclose(got, want, atol=1e-6)
  assert float(state.count.numpy()) == 4


def test_bn_update_is_the_example_weighted_average_of_batch_statistics():
  inputs = keras.Input((3,))
  x = keras.layers.Dense(3, kernel_initializer="identity", use_bias=False)(inputs)
  net = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.9)(x))
  rng = np.random.default_rng(0)
  batches = [rng.standard_normal((n, 3)).astype(np.float32) * 2 + 1 for n in (5, 3, 8)]
  assert averaging.bn_update(net, iter(batches)) == 16
  bn = net.layers[-1]
  want_mean = sum(len(b) * b.mean(0) for b in batches) / 16
  want_var = sum(len(b) * b.var(0) for b in batches) / 16  # Keras: biased batch variance.
  np.testing.assert_allclose(np.asarray(bn.moving_mean), want_mean, atol=1e-5)
  np.testing.assert_allclose(np.asarray(bn.moving_variance), want_var, atol=1e-4)
  assert bn.momentum == 0.9  # Restored.


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(swag_start=0.0), "swag_start"),
    (dict(swag_start=1.0), "swag_start"),
    (dict(max_num_models=1), "max_num_models"),
    (dict(num_samples=0), "num_samples"),
    (dict(collect_every=0), "collect_every"),
  ],
)
def test_swag_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    methods.SWAG(**kwargs)


def test_weight_averaging_bad_input():
  for binding, match in (
    ("weight_averaging.kind = 'mean'", "kind"),
    ("weight_averaging.start = 1.0", "start"),
    ("weight_averaging.ema_momentum = 1.0", "ema_momentum"),
  ):
    gin.clear_config()
    gin.parse_config(["weight_averaging.kind = 'swa'", binding])
    with pytest.raises(ValueError, match=match):
      weight_average.weight_averaging()
  gin.clear_config()
  gin.parse_config(["weight_averaging.kind = 'swa'", "weight_averaging.every = 5"])
  with pytest.raises(ValueError, match="averages weights itself"):
    weight_average.settings_of(methods.SWAG())
  network = keras.Model(inp := keras.Input((2,)), keras.layers.Dense(2)(inp))
  weight_average.attach(methods.Deterministic(), network, lambda: None)
  with pytest.raises(ValueError, match="collect nothing"):
    weight_average.schedule(network, total_steps=10)  # From step 7, every 5: none.
  gin.clear_config()
