"""Split-conformal sets: the vectorised scores and sets against a per-example, per-label
Python transcription of the definitions, coverage on exchangeable data, the too-small-n
refusal, RAPS(lam=0) = APS, the Keras layer against `apply`, state round trips and errors.
"""

import fractions
import math

import numpy as np
import pytest
import scipy.special

from keras_unc.metrics import conformal as metrics
from keras_unc.posthoc import conformal as cf
from keras_unc.posthoc.base import REGISTRY, FitData
from tests.layers.helpers import run_layer_test


def _probs(n, c, seed, ties=False):
  rng = np.random.default_rng(seed)
  probs = scipy.special.softmax(rng.normal(size=(n, c)) * 1.5, axis=1)
  if ties:  # Rows with tied probabilities (as isotonic calibration gives).
    probs[::3] = np.round(probs[::3] * 4) / 4 + 1e-9
    probs[::3, :2] = probs[::3, :1]
    probs /= probs.sum(1, keepdims=True)
  return probs.astype(np.float32)


def _sample_labels(probs, seed):
  rng = np.random.default_rng(seed)
  cum = np.cumsum(np.asarray(probs, np.float64), 1)
  return np.minimum((rng.random((len(probs), 1)) > cum).sum(1), probs.shape[1] - 1)


# --- A transcription of the definitions, one example and one label at a time ---------------------


def _loop_score(p, y, method, u, lam, k_reg):
  """The score of label y of one example (p: a list of floats)."""
  if method == "thr":
    return 1.0 - p[y]
  mass = sum(pj for pj in p if pj >= p[y])  # Labels ranked at or above y (ties included).
  rank = sum(1 for pj in p if pj >= p[y])
  score = mass - (u * p[y] if u is not None else 0.0)
  if method == "raps":
    score += lam * max(0, rank - k_reg)
  return score


def _loop_q_hat(scores, alpha):
  n = len(scores)
  k = math.ceil((n + 1) * (1 - fractions.Fraction(str(alpha))))  # Exact arithmetic.
  return sorted(scores)[k - 1]


def _loop_sets(probs, q_hat, method, us, lam, k_reg, allow_empty):
  sets = []
  for i, p in enumerate(np.asarray(probs, np.float64).tolist()):
    u = None if us is None else us[i]
    s = [y for y in range(len(p)) if _loop_score(p, y, method, u, lam, k_reg) <= q_hat]
    if not s and not allow_empty:
      s = [y for y in range(len(p)) if p[y] == max(p)]
    row = np.zeros(len(p), bool)
    row[s] = True
    sets.append(row)
  return np.array(sets)


CASES = [
  ("thr", {}),
  ("aps", {}),
  ("aps", {"allow_empty": True}),
  ("aps", {"randomized": True, "seed": 3}),
  ("raps", {"lam": 0.1, "k_reg": 1}),
  ("raps", {"lam": 0.05, "k_reg": 2, "randomized": True, "allow_empty": True}),
]


@pytest.mark.parametrize("name, kwargs", CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_scores_and_sets_match_the_loop_transcription(name, kwargs, ties):
  probs, test = _probs(200, 6, 0, ties), _probs(80, 6, 1, ties)
  labels = _sample_labels(probs, 2)
  c = REGISTRY["conformal"][name](alpha=0.2, **kwargs).fit(FitData({"probs": probs}, labels))
  lam, k_reg = kwargs.get("lam", 0.0), kwargs.get("k_reg", 0)
  randomized = kwargs.get("randomized", False)
  seed = kwargs.get("seed", 0)
  # The component's documented NumPy streams: (seed, 0) in fit, (seed, 1) in apply.
  u_fit = np.random.default_rng((seed, 0)).random(len(probs)) if randomized else None
  u_apply = np.random.default_rng((seed, 1)).random(len(test)) if randomized else None
  p64 = np.asarray(probs, np.float64).tolist()
  scores = [
    _loop_score(p, y, name, None if u_fit is None else u_fit[i], lam, k_reg)
    for i, (p, y) in enumerate(zip(p64, labels))
  ]
  q_hat = _loop_q_hat(scores, 0.2)
  assert c.q_hat == pytest.approx(q_hat, abs=1e-12)
  expected = _loop_sets(
    test, q_hat, name, u_apply, lam, k_reg, kwargs.get("allow_empty", name == "thr")
  )
  found = c.apply({"probs": test})
  np.testing.assert_array_equal(found["prediction_set"], expected)
  np.testing.assert_array_equal(found["set_size"], expected.sum(1))
  assert found["set_size"].dtype == np.int32 and found["prediction_set"].dtype == bool


@pytest.mark.parametrize(
  "name, kwargs",
  [
    ("thr", {}),
    ("aps", {}),
    ("aps", {"randomized": True}),
    ("raps", {}),
    ("raps", {"randomized": True}),
  ],
)
def test_coverage_on_exchangeable_data(name, kwargs):
  probs = _probs(6000, 10, 10)
  labels = _sample_labels(probs, 11)  # Labels drawn from the probs: exchangeable examples.
  cal = FitData({"probs": probs[:2000]}, labels[:2000])
  c = REGISTRY["conformal"][name](alpha=0.1, **kwargs).fit(cal)
  sets = c.apply({"probs": probs[2000:]})["prediction_set"]
  assert 0.88 <= metrics.coverage(sets, labels[2000:]) <= 0.93


def test_too_small_calibration_split_is_refused():
  probs = _probs(8, 3, 0)
  with pytest.raises(ValueError, match=r"alpha=0.1 .*at least 9 calibration examples.*n=8"):
    cf.APSConformal(alpha=0.1).fit(FitData({"probs": probs}, np.zeros(8, int)))
  # n = 9 is enough at alpha = 0.1: ceil(10 * 0.9) = 9 (not 10 from 10 * 0.9 = 9.000000000000002).
  c = cf.ThrConformal(alpha=0.1).fit(FitData({"probs": _probs(9, 3, 0)}, np.zeros(9, int)))
  assert c.q_hat == pytest.approx(1 - _probs(9, 3, 0)[:, 0].min())
  assert cf.min_calibration_size(0.05) == 19 and cf.quantile_index(19, 0.05) == 19


@pytest.mark.parametrize("randomized", [False, True])
def test_raps_with_zero_lambda_is_aps(randomized):
  probs, test = _probs(300, 7, 3), _probs(100, 7, 4)
  data = FitData({"probs": probs}, _sample_labels(probs, 5))
  aps = cf.APSConformal(randomized=randomized).fit(data)
  raps = cf.RAPSConformal(lam=0.0, k_reg=2, randomized=randomized).fit(data)
  assert raps.q_hat == aps.q_hat
  for key, value in aps.apply({"probs": test}).items():
    np.testing.assert_array_equal(raps.apply({"probs": test})[key], value)


COMPONENTS = [
  lambda: cf.ThrConformal(alpha=0.2),
  lambda: cf.APSConformal(alpha=0.2),
  lambda: cf.APSConformal(alpha=0.3, allow_empty=True),
  lambda: cf.RAPSConformal(alpha=0.2, lam=0.1, k_reg=1),
  lambda: cf.RAPSConformal(alpha=0.2, lam=0.02, k_reg=2, allow_empty=True),
]


@pytest.mark.parametrize("make", COMPONENTS)
def test_layer_equals_apply_and_state_round_trips(make):
  probs = _probs(300, 6, 6)
  c = make().fit(FitData({"probs": probs}, _sample_labels(probs, 7)))
  test = _probs(90, 6, 8, ties=True)
  outputs = {"probs": test, "uncertainty": np.zeros(90, np.float32)}
  expected = c.apply(outputs)
  found = {k: np.asarray(v) for k, v in c.layer()(outputs).items()}
  np.testing.assert_array_equal(found["prediction_set"], expected["prediction_set"])
  np.testing.assert_array_equal(found["set_size"], expected["set_size"])
  assert found["prediction_set"].dtype == bool and found["set_size"].dtype == np.int32
  fresh = type(c)(**c.get_config()).load_state(c.state())
  for key, value in fresh.apply(outputs).items():
    np.testing.assert_array_equal(value, expected[key])


def test_randomized_layer_sets_lie_between_the_extreme_draws():
  probs = _probs(300, 6, 9)
  c = cf.RAPSConformal(alpha=0.2, lam=0.05, k_reg=1, randomized=True, allow_empty=True)
  c.fit(FitData({"probs": probs}, _sample_labels(probs, 10)))
  test = _probs(200, 6, 11)
  served = np.asarray(c.layer()({"probs": test})["prediction_set"])
  p = np.asarray(test, np.float64)
  smallest = cf.label_scores(p, "raps", np.zeros(200), 0.05, 1) <= c.q_hat  # U = 0.
  largest = cf.label_scores(p, "raps", np.ones(200), 0.05, 1) <= c.q_hat  # U -> 1.
  assert np.all(served >= smallest) and np.all(served <= largest)
  assert (served != smallest).any()  # The draw matters.


@pytest.mark.parametrize(
  "kwargs, deterministic",
  [
    ({"method": "raps", "q_hat": 0.8, "lam": 0.1, "k_reg": 1}, True),
    ({"method": "thr", "q_hat": 0.7, "allow_empty": True}, True),
    ({"method": "aps", "q_hat": 0.8, "randomized": True, "seed": 4}, False),
  ],
)
def test_layer_harness(tmp_path, kwargs, deterministic):
  run_layer_test(
    cf.ConformalSets,
    kwargs,
    _probs(64, 5, 12),
    tmp_path=tmp_path,
    expected_output_shape=((64, 5), (64,)),
    expected_num_trainable_weights=0,
    expected_num_seed_generators=0 if deterministic else 1,
    deterministic=deterministic,
    run_mixed_precision_check=False,  # Its outputs are bool and int32 by contract.
  )


def test_errors_name_the_problem():
  probs = _probs(50, 4, 0)
  labels = _sample_labels(probs, 1)
  with pytest.raises(ValueError, match=r"alpha .* must be in \(0, 1\)"):
    cf.APSConformal(alpha=1.0)
  with pytest.raises(ValueError, match="lam must be"):
    cf.RAPSConformal(lam=-0.1)
  with pytest.raises(ValueError, match="k_reg must be"):
    cf.RAPSConformal(k_reg=-1)
  with pytest.raises(ValueError, match="randomized must be True or False"):
    cf.APSConformal(randomized="yes")
  with pytest.raises(ValueError, match="not fitted"):
    cf.ThrConformal().apply({"probs": probs})
  c = cf.APSConformal().fit(FitData({"probs": probs}, labels))
  with pytest.raises(ValueError, match="fitted on 4"):
    c.apply({"probs": _probs(5, 3, 0)})
  with pytest.raises(ValueError, match="has no 'probs'"):
    c.apply({"logits": probs})
  with pytest.raises(ValueError, match="lacks"):
    cf.ThrConformal().load_state({"q_hat": np.float64(0.5)})
  with pytest.raises(ValueError, match="Unknown conformal method"):
    cf.ConformalSets(method="lac")
