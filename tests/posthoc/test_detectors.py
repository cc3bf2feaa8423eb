"""Post-hoc OOD detectors: scores vs independent transcriptions, served layer == apply,
state round trip, the tpr threshold, and the refusals."""

import keras
import numpy as np
import pytest
from scipy.special import logsumexp, softmax
from sklearn.covariance import EmpiricalCovariance
from sklearn.neighbors import NearestNeighbors

from keras_unc import posthoc
from keras_unc.posthoc import detectors
from tests.layers.helpers import run_layer_test

D, C, M = 10, 4, 3


def _make(seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(D, C)), rng.normal(size=C)


HEAD = _make(0)


def _outputs(n, seed, members=M, shift=0.0):
  """Random network outputs of a deterministic linear head plus member noise (float32)."""
  rng = np.random.default_rng(seed)
  emb = np.maximum(rng.normal(size=(n, D)) * np.linspace(2.0, 0.2, D) + 0.3 + shift, 0.0)
  w, b = HEAD
  logits = (emb @ w + b)[:, None, :] + 0.5 * rng.normal(size=(n, members, C))
  probs = softmax(logits, axis=-1).mean(axis=1)
  out = {"logits": logits, "probs": probs, "uncertainty": 1 - probs.max(1), "embedding": emb}
  return {k: v.astype(np.float32) for k, v in out.items()}


CAL, TRAIN, TEST = _outputs(150, 1), _outputs(300, 2), _outputs(60, 3, shift=0.5)
TRAIN_Y = np.random.default_rng(4).integers(0, C, 300)
DATA = posthoc.FitData(CAL, np.zeros(150, int), TRAIN, TRAIN_Y, HEAD)


def _f64(o, key):
  return o[key].astype(np.float64)


def _mahalanobis_loops(o, relative=False):
  x, y = _f64(TRAIN, "embedding"), TRAIN_Y
  means = {k: x[y == k].mean(0) for k in np.unique(y)}
  prec = EmpiricalCovariance(assume_centered=True).fit(x - np.stack([means[k] for k in y]))
  z = _f64(o, "embedding")
  d = np.stack([prec.mahalanobis(z - means[k]) for k in means], 1).min(1)
  if relative:
    d = d - EmpiricalCovariance().fit(x).mahalanobis(z)
  return d


def _knn_sklearn(o, k=50):
  norm = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)
  nn = NearestNeighbors(n_neighbors=k).fit(norm(_f64(TRAIN, "embedding")))
  return nn.kneighbors(norm(_f64(o, "embedding")))[0][:, -1]


def _vim_reference(o):  # haoqiwang/vim benchmark.py (torch layout w [C, D]); OOD-positive.
  w, b = HEAD[0].T, HEAD[1]
  train, x = _f64(TRAIN, "embedding"), _f64(o, "embedding")
  u = -np.linalg.pinv(w) @ b
  cov = EmpiricalCovariance(assume_centered=True).fit(train - u).covariance_
  vals, vecs = np.linalg.eig(cov)
  ns = vecs.T[np.argsort(-vals)[D // 2 :]].T
  alpha = (train @ w.T + b).max(-1).mean() / np.linalg.norm((train - u) @ ns, axis=-1).mean()
  return alpha * np.linalg.norm((x - u) @ ns, axis=-1) - logsumexp(x @ w.T + b, axis=-1)


def _react_reference(o):
  clip = np.percentile(_f64(TRAIN, "embedding").flatten(), 90)
  return -logsumexp(np.clip(_f64(o, "embedding"), None, clip) @ HEAD[0] + HEAD[1], axis=-1)


def _mi_loops(o):
  out = []
  for row in _f64(o, "logits"):
    ps = [softmax(r) for r in row]
    h = lambda p: -np.sum(p * np.log(p))
    out.append(h(np.mean(ps, 0)) - np.mean([h(p) for p in ps]))
  return np.array(out)


def _vr_loops(o):
  votes = _f64(o, "logits").argmax(-1)
  return np.array([1 - np.bincount(v, minlength=C).max() / M for v in votes])


def _gen_reference(o, gamma=0.1):
  q = np.sort(_f64(o, "probs"), axis=1)[:, -100:]
  return np.sum(q**gamma * (1 - q) ** gamma, axis=1)


REFERENCES = {
  "msp": lambda o: 1 - _f64(o, "probs").max(1),
  "max_logit": lambda o: -_f64(o, "logits").mean(1).max(1),
  "energy": lambda o: -logsumexp(_f64(o, "logits").mean(1), axis=1),
  "gen": _gen_reference,
  "mutual_information": _mi_loops,
  "variation_ratio": _vr_loops,
  "mahalanobis": _mahalanobis_loops,
  "relative_mahalanobis": lambda o: _mahalanobis_loops(o, relative=True),
  "knn": _knn_sklearn,
  "vim": _vim_reference,
  "react": _react_reference,
}


def test_every_detector_is_registered_and_has_a_reference():
  assert set(posthoc.names("detector")) >= set(detectors.DETECTORS)
  assert set(REFERENCES) == set(detectors.DETECTORS)


@pytest.fixture(scope="module")
def fitted():
  return {name: posthoc.get("detector", name)().fit(DATA) for name in detectors.DETECTORS}


@pytest.mark.parametrize("name", detectors.DETECTORS)
def test_score_matches_reference_transcription(fitted, name):
  got = fitted[name].apply(TEST)
  assert got["ood_score"].dtype == np.float32 and got["is_ood"].dtype == bool
  want = REFERENCES[name](TEST)
  np.testing.assert_allclose(got["ood_score"], want, rtol=2e-6, atol=2e-6 * np.abs(want).max())


@pytest.mark.parametrize("name", detectors.DETECTORS)
def test_layer_equals_apply(fitted, name):
  det = fitted[name]
  want = det.apply(TEST)
  served = det.layer()({k: keras.ops.convert_to_tensor(v) for k, v in TEST.items()})
  score = keras.ops.convert_to_numpy(served["ood_score"])
  scale = max(1.0, float(np.abs(want["ood_score"]).max()))
  np.testing.assert_allclose(score, want["ood_score"], rtol=1e-5, atol=1e-5 * scale)
  is_ood = keras.ops.convert_to_numpy(served["is_ood"])
  # Same decisions except for scores within rounding of the threshold.
  near = np.abs(want["ood_score"] - det.threshold) <= 1e-5 * scale
  np.testing.assert_array_equal(is_ood[~near], want["is_ood"][~near])


@pytest.mark.parametrize("name", detectors.DETECTORS)
def test_state_round_trip(fitted, name):
  det = fitted[name]
  cls = posthoc.get("detector", name)
  again = cls(**det.get_config()).load_state(det.state())
  for key, value in again.apply(TEST).items():
    np.testing.assert_array_equal(value, det.apply(TEST)[key])
  assert all(isinstance(v, np.ndarray) for v in det.state().values())


@pytest.mark.parametrize("name", ["energy", "knn", "vim", "mahalanobis", "mutual_information"])
def test_threshold_keeps_tpr_of_the_calibration_split(name):
  for tpr in (0.9, 0.95):
    det = posthoc.get("detector", name)(tpr=tpr).fit(DATA)
    scores = det.apply(CAL)["ood_score"]
    kept = np.mean(scores <= det.threshold)
    assert tpr <= kept <= tpr + 1.0 / len(scores), (name, tpr, kept)
    assert np.mean(~det.apply(CAL)["is_ood"]) == kept


def test_threshold_generalises_to_new_in_distribution_data():
  cal = _outputs(4000, 10)
  det = posthoc.get("detector", "energy")(tpr=0.9).fit(posthoc.FitData(cal, np.zeros(4000, int)))
  assert np.mean(~det.apply(_outputs(4000, 11))["is_ood"]) == pytest.approx(0.9, abs=0.02)
  # Flat logits (low confidence) are flagged more often than 1 - tpr: the score means something.
  flat = _outputs(4000, 12)
  assert np.mean(det.apply({**flat, "logits": 0.1 * flat["logits"]})["is_ood"]) > 0.3


def test_knn_bank_subsample_is_seeded_and_k_clipped():
  small = posthoc.get("detector", "knn")(k=50, bank_size=20, seed=1).fit(DATA)
  assert small.state()["bank"].shape == (20, D)
  again = posthoc.get("detector", "knn")(k=50, bank_size=20, seed=1).fit(DATA)
  np.testing.assert_array_equal(small.state()["bank"], again.state()["bank"])
  served = small.layer()({k: keras.ops.convert_to_tensor(v) for k, v in TEST.items()})
  np.testing.assert_allclose(
    keras.ops.convert_to_numpy(served["ood_score"]), small.apply(TEST)["ood_score"], atol=1e-5
  )


@pytest.mark.parametrize("name", ["vim", "react"])
def test_head_detectors_refuse_without_linear_head(name):
  data = posthoc.FitData(CAL, DATA.labels, TRAIN, TRAIN_Y, None)
  with pytest.raises(ValueError, match="last linear layer"):
    posthoc.get("detector", name)().fit(data)


@pytest.mark.parametrize("name", ["knn", "vim", "react", "mahalanobis", "relative_mahalanobis"])
def test_train_detectors_refuse_without_train_outputs(name):
  with pytest.raises(ValueError, match="train_outputs"):
    posthoc.get("detector", name)().fit(posthoc.FitData(CAL, DATA.labels, None, None, HEAD))


def test_mahalanobis_refuses_without_train_labels():
  with pytest.raises(ValueError, match="train_labels"):
    posthoc.get("detector", "mahalanobis")().fit(posthoc.FitData(CAL, DATA.labels, TRAIN))


@pytest.mark.parametrize("name", ["mutual_information", "variation_ratio"])
def test_epistemic_detectors_refuse_one_member(fitted, name):
  one = {**CAL, "logits": CAL["logits"][:, :1]}
  with pytest.raises(ValueError, match="multi-member or MC method"):
    posthoc.get("detector", name)().fit(posthoc.FitData(one, DATA.labels))
  with pytest.raises(ValueError, match="multi-member or MC method"):
    fitted[name].apply(one)
  with pytest.raises(ValueError, match="multi-member or MC method"):
    fitted[name].layer()({k: keras.ops.convert_to_tensor(v) for k, v in one.items()})


def test_missing_output_unfitted_and_bad_tpr_are_clear_errors(fitted):
  with pytest.raises(ValueError, match="needs the network output 'embedding'"):
    fitted["knn"].apply({"logits": TEST["logits"], "probs": TEST["probs"]})
  with pytest.raises(ValueError, match="not fitted"):
    posthoc.get("detector", "energy")().apply(TEST)
  with pytest.raises(ValueError, match="tpr"):
    posthoc.get("detector", "energy")(tpr=1.5)
  with pytest.raises(ValueError, match="tpr"):
    posthoc.get("detector", "energy")(tpr=0.0)
  with pytest.raises(ValueError, match="principal dimension"):
    posthoc.get("detector", "vim")(dim=D).fit(DATA)


def test_config_rebuilds_unfitted_detector_with_same_hyperparameters():
  det = posthoc.get("detector", "gen")(tpr=0.9, gamma=0.3, top_m=2)
  assert det.get_config() == {"tpr": 0.9, "gamma": 0.3, "top_m": 2}
  fitted = type(det)(**det.get_config()).fit(DATA)
  np.testing.assert_allclose(
    fitted.apply(TEST)["ood_score"], _gen_reference_top(TEST, 0.3, 2), rtol=1e-6
  )


def _gen_reference_top(o, gamma, m):
  q = np.sort(_f64(o, "probs"), axis=1)[:, -m:]
  return np.sum(q**gamma * (1 - q) ** gamma, axis=1)


@pytest.mark.parametrize("name", ["energy", "knn", "relative_mahalanobis"])
def test_detector_layer_harness(fitted, name, tmp_path):
  layer = fitted[name].layer()
  config = layer.get_config()
  inputs = {k: v[:8] for k, v in TEST.items()}
  report = run_layer_test(
    detectors.DetectorLayer,
    {"detector": name, "params": config["params"], "shapes": config["shapes"]},
    {"inputs": inputs},
    tmp_path=tmp_path,
    expected_output_shape=((8,), (8,)),
    expected_num_trainable_weights=0,
    expected_num_non_trainable_weights=len(config["shapes"]),
    run_mixed_precision_check=False,  # The harness wants float outputs; is_ood is bool.
  )
  assert report.loaded_layer.get_config()["shapes"] == config["shapes"]
  # Under mixed precision the weights and the score stay float32.
  mixed = detectors.DetectorLayer.from_config({**config, "dtype": "mixed_bfloat16"})
  out = mixed(inputs)
  assert all(w.dtype == "float32" for w in mixed.weights)
  assert keras.backend.standardize_dtype(out["ood_score"].dtype) == "float32"
  assert keras.backend.standardize_dtype(out["is_ood"].dtype) == "bool"
  # The .keras round trip keeps the fitted weights.
  model_in = {k: keras.Input(v.shape[1:], name=k) for k, v in inputs.items()}
  model = keras.Model(model_in, layer(model_in))
  model.save(tmp_path / "fitted.keras")
  again = keras.saving.load_model(tmp_path / "fitted.keras")
  np.testing.assert_allclose(
    keras.ops.convert_to_numpy(again(inputs)["ood_score"]),
    fitted[name].apply(inputs)["ood_score"],
    rtol=1e-5,
    atol=1e-5,
  )
