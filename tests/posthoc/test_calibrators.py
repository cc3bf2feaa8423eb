"""Post-hoc calibrators: temperature and vector scaling against independent SciPy fits,
isotonic regression against scikit-learn, their Keras layers against `apply`, state round
trips and input errors.
"""

import numpy as np
import pytest
import scipy.optimize
import scipy.special
from sklearn.isotonic import IsotonicRegression

from keras_unc.metrics import entropy, msp_uncertainty
from keras_unc.posthoc import calibrators as cal
from keras_unc.posthoc.base import REGISTRY, FitData
from tests.layers.helpers import run_layer_test

C = 4


def _data(n=400, overconfidence=3.0, seed=0, num_classes=C):
  """Labels drawn from softmax(true logits); the model's logits are the true ones scaled up
  (over-confident), so the NLL-optimal temperature is about `overconfidence`.
  """
  rng = np.random.default_rng(seed)
  true = rng.normal(size=(n, num_classes)) * 1.5
  p_true = scipy.special.softmax(true, axis=1)
  labels = np.array([rng.choice(num_classes, p=p) for p in p_true])
  logits = overconfidence * true
  probs = scipy.special.softmax(logits, axis=1).astype(np.float32)
  return logits, probs, labels


def _nll(logits, labels):
  return float(np.mean(-scipy.special.log_softmax(logits, axis=1)[np.arange(len(labels)), labels]))


def _z(probs):
  return np.log(np.maximum(np.asarray(probs, np.float64), 1e-12))


def test_calibrators_are_registered():
  assert REGISTRY["calibrator"]["temperature"] is cal.TemperatureCalibrator
  assert REGISTRY["calibrator"]["vector"] is cal.VectorCalibrator
  assert REGISTRY["calibrator"]["isotonic"] is cal.IsotonicCalibrator


def test_temperature_matches_scipy_and_cools_an_overconfident_model():
  logits, probs, labels = _data()
  t = cal.TemperatureCalibrator().fit(FitData({"probs": probs}, labels))
  z = _z(probs)
  ref = scipy.optimize.minimize_scalar(
    lambda log_t: _nll(z / np.exp(log_t), labels),
    bounds=(np.log(1e-2), np.log(1e2)),
    method="bounded",
    options={"xatol": 1e-10},
  )
  assert t.temperature == pytest.approx(np.exp(ref.x), rel=1e-4)
  assert t.nll_after == pytest.approx(ref.fun, abs=1e-8)
  assert t.temperature > 2.0  # Over-confident by 3: cooled.
  assert t.nll_after <= t.nll_before - 0.05
  # With one member, scaling log-probs is exactly softmax(logits / T).
  found = t.apply({"probs": probs})["probs"]
  np.testing.assert_allclose(found, scipy.special.softmax(logits / t.temperature, 1), atol=1e-6)


def test_temperature_below_one_for_an_underconfident_model():
  _, probs, labels = _data(overconfidence=0.4)
  assert cal.TemperatureCalibrator().fit(FitData({"probs": probs}, labels)).temperature < 0.7


def _vector_nll(params, z, labels):
  w, b = params[: z.shape[1]], params[z.shape[1] :]
  return _nll(w * z + b, labels)


def test_vector_scaling_is_a_stationary_point_matching_scipy_and_beats_temperature():
  logits, probs, labels = _data(n=300, seed=1)
  bias = np.array([0.0, 0.8, -0.5, 0.3])  # Class-dependent miscalibration.
  probs = scipy.special.softmax(logits + bias, axis=1).astype(np.float32)
  data = FitData({"probs": probs}, labels)
  v = cal.VectorCalibrator().fit(data)
  z = _z(probs)
  x = np.concatenate([v.scale, v.bias])
  h = 1e-6
  grad = np.array(
    [
      (_vector_nll(x + h * e, z, labels) - _vector_nll(x - h * e, z, labels)) / (2 * h)
      for e in np.eye(len(x))
    ]
  )
  assert np.abs(grad).max() < 1e-6
  assert abs(v.bias.mean()) < 1e-12  # Centred (the free direction of b).
  t = cal.TemperatureCalibrator().fit(data)
  assert v.nll_after <= t.nll_after + 1e-12
  ref = scipy.optimize.minimize(
    _vector_nll,
    np.concatenate([np.ones(C), np.zeros(C)]),
    args=(z, labels),
    method="Nelder-Mead",
    options={"maxiter": 40000, "maxfev": 40000, "xatol": 1e-10, "fatol": 1e-14},
  )
  assert v.nll_after == pytest.approx(ref.fun, abs=1e-6)
  ref_probs = scipy.special.softmax(ref.x[:C] * z + ref.x[C:], axis=1)
  np.testing.assert_allclose(v.apply({"probs": probs})["probs"], ref_probs, atol=1e-3)


def _sklearn_isotonic(probs_cal, labels, probs):
  q = np.stack(
    [
      IsotonicRegression(out_of_bounds="clip")
      .fit(probs_cal[:, j], labels == j)
      .predict(probs[:, j])
      for j in range(probs.shape[1])
    ],
    axis=1,
  )
  sums = q.sum(1, keepdims=True)
  return np.where(sums > 0, q / np.where(sums > 0, sums, 1), 1.0 / q.shape[1])


@pytest.mark.parametrize("decimals", [None, 2])  # 2: many tied probabilities.
def test_isotonic_matches_sklearn(decimals):
  _, probs, labels = _data(n=300, seed=2)
  _, test, _ = _data(n=200, seed=3, overconfidence=5.0)  # Also outside the fitted range.
  if decimals is not None:
    probs = np.round(probs, decimals)
    probs /= probs.sum(1, keepdims=True)
  iso = cal.IsotonicCalibrator().fit(FitData({"probs": probs}, labels))
  for x in (probs, test):
    expected = _sklearn_isotonic(np.asarray(probs, np.float64), labels, np.asarray(x, np.float64))
    np.testing.assert_allclose(iso.apply({"probs": x})["probs"], expected, atol=1e-6)


def test_isotonic_all_zero_row_becomes_uniform():
  knots = np.tile([0.0, 0.5, 1.0], (3, 1))
  iso = cal.IsotonicCalibrator().load_state(
    {"knots_x": knots, "knots_y": np.tile([0.0, 0.0, 1.0], (3, 1)), "num_knots": [3, 3, 3]}
  )
  probs = np.array([[0.4, 0.3, 0.3], [0.8, 0.1, 0.1]], np.float32)
  expected = [[1 / 3] * 3, [1.0, 0.0, 0.0]]
  np.testing.assert_allclose(iso.apply({"probs": probs})["probs"], expected, atol=1e-7)
  np.testing.assert_allclose(iso.layer()({"probs": probs})["probs"], expected, atol=1e-7)


def test_pool_adjacent_violators_by_hand():
  np.testing.assert_allclose(
    cal.pool_adjacent_violators([1.0, 3.0, 2.0, 0.0, 5.0], [1, 1, 1, 1, 1]),
    [1.0, 5 / 3, 5 / 3, 5 / 3, 5.0],
  )


CALIBRATORS = [
  lambda: cal.TemperatureCalibrator(uncertainty="msp"),
  lambda: cal.VectorCalibrator(uncertainty="entropy"),
  lambda: cal.IsotonicCalibrator(uncertainty="msp"),
  lambda: cal.IsotonicCalibrator(),
]


@pytest.mark.parametrize("make", CALIBRATORS)
def test_layer_equals_apply_and_state_round_trips(make):
  _, probs, labels = _data(n=300, seed=4)
  c = make().fit(FitData({"probs": probs}, labels))
  _, test, _ = _data(n=64, seed=5, overconfidence=1.0)
  rng = np.random.default_rng(0)
  outputs = {"probs": test, "logits": rng.normal(size=(64, 2, C)).astype(np.float32)}
  expected = c.apply(outputs)
  assert expected["probs"].dtype == np.float32 and expected["uncalibrated_probs"] is test
  found = {k: np.asarray(v) for k, v in c.layer()(outputs).items()}
  assert found.keys() == expected.keys()
  for key in expected:
    np.testing.assert_allclose(found[key], expected[key], atol=1e-5, err_msg=key)
  if c.uncertainty is not None:
    score = msp_uncertainty if c.uncertainty == "msp" else entropy
    np.testing.assert_allclose(expected["uncertainty"], score(expected["probs"]), atol=1e-5)
  else:
    assert "uncertainty" not in expected
  fresh = type(c)(**c.get_config()).load_state(c.state())
  again = fresh.apply(outputs)
  for key in expected:
    np.testing.assert_array_equal(again[key], expected[key])


def _probs(n=6, c=C, seed=0):
  return scipy.special.softmax(np.random.default_rng(seed).normal(size=(n, c)), 1).astype("float32")


def test_layer_harness_temperature(tmp_path):
  run_layer_test(
    cal.TemperatureScaling,
    {"temperature": 1.7, "uncertainty": "msp"},
    _probs(),
    tmp_path=tmp_path,
    expected_output_shape=((6, C), (6, C), (6,)),
    expected_num_trainable_weights=0,
    expected_num_non_trainable_weights=0,
  )


def test_layer_harness_vector(tmp_path):
  run_layer_test(
    cal.VectorScaling,
    {"num_classes": C, "uncertainty": "entropy"},
    _probs(),
    tmp_path=tmp_path,
    expected_output_shape=((6, C), (6, C), (6,)),
    expected_num_trainable_weights=0,
    expected_num_non_trainable_weights=2,
  )


def test_layer_harness_isotonic(tmp_path):
  run_layer_test(
    cal.IsotonicCalibration,
    {"num_classes": C, "num_knots": 5},
    _probs(),
    tmp_path=tmp_path,
    expected_output_shape=((6, C), (6, C)),
    expected_num_trainable_weights=0,
    expected_num_non_trainable_weights=2,
  )


def test_errors_name_the_problem():
  _, probs, labels = _data(n=50)
  with pytest.raises(ValueError, match="uncertainty must be None"):
    cal.TemperatureCalibrator(uncertainty="variance")
  with pytest.raises(ValueError, match="not fitted"):
    cal.VectorCalibrator().apply({"probs": probs})
  with pytest.raises(ValueError, match="has no 'probs'"):
    cal.TemperatureCalibrator().fit(FitData({"logits": probs}, labels))
  with pytest.raises(ValueError, match="logits instead of probabilities"):
    cal.TemperatureCalibrator().fit(FitData({"probs": np.log(probs)}, labels))
  with pytest.raises(ValueError, match="same length"):
    cal.TemperatureCalibrator().fit(FitData({"probs": probs}, labels[:10]))
  v = cal.VectorCalibrator().fit(FitData({"probs": probs}, labels))
  with pytest.raises(ValueError, match="fitted on 4"):
    v.apply({"probs": _probs(c=3)})
  with pytest.raises(ValueError, match="lacks 'bias'"):
    cal.VectorCalibrator().load_state({"scale": np.ones(3)})
  with pytest.raises(ValueError, match="> 0"):
    cal.TemperatureCalibrator().load_state({"temperature": np.float64(-1)})
  with pytest.raises(ValueError, match="l2 must be"):
    cal.VectorCalibrator(l2=-1)
  with pytest.raises(ValueError, match="knot order"):
    cal.IsotonicCalibrator().load_state(
      {"knots_x": [[0.5, 0.1]], "knots_y": [[0.0, 1.0]], "num_knots": [2]}
    )
