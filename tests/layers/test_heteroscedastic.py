"""Heteroscedastic heads: the shared harness, formulas by hand with fixed noise, limits, errors."""

import keras
import numpy as np
import pytest

from keras_unc.layers.heteroscedastic import HetXLDense, MCSigmoidDenseFA, MCSoftmaxDenseFA
from tests.layers.helpers import run_layer_test

B, D, C = 3, 5, 4


def _x(seed=0, b=B, d=D):
  return np.random.default_rng(seed).normal(size=(b, d)).astype("float32")


# Weight counts by hand (all trainable; every Dense holds a kernel and a bias): the FA heads
# have loc Dense(C) unless `loc` is passed, diag Dense(C) and either scale Dense(C·R) or, when
# parameter_efficient, scale_heteroscedastic Dense(C) plus the shared factor [R, C]; R = 0
# drops the factor weights. HetXLDense: classifier Dense(C), diag Dense(D), scale Dense(D·R).
# Each head owns one seed generator and samples at inference.
HARNESS_CASES = [
  pytest.param(
    MCSoftmaxDenseFA,
    {"num_classes": C, "num_factors": 2, "temperature": 0.9, "test_mc_samples": 4, "seed": 1},
    _x(),
    {"expected_output_shape": (B, C), "expected_num_trainable_weights": 6},
    id="softmax_fa",
  ),
  pytest.param(
    MCSoftmaxDenseFA,
    {"num_classes": C, "num_factors": 0, "train_mc_samples": 2, "test_mc_samples": 3},
    _x(),
    {"expected_output_shape": (B, C), "expected_num_trainable_weights": 4},
    id="softmax_diagonal_unseeded",
  ),
  pytest.param(
    MCSoftmaxDenseFA,
    {
      "num_classes": C,
      "num_factors": 2,
      "train_mc_samples": 4,
      "test_mc_samples": 4,
      "parameter_efficient": True,
      "share_samples_across_batch": True,
      "return_samples": True,
      "seed": 1,
    },
    _x(),
    {"expected_output_shape": ((B, C), (B, 4, C)), "expected_num_trainable_weights": 7},
    id="softmax_parameter_efficient_samples",
  ),
  pytest.param(
    MCSoftmaxDenseFA,
    {"num_classes": C, "num_factors": 2, "test_mc_samples": 4, "seed": 2},
    {"inputs": _x(), "loc": _x(seed=3, d=C)},
    {"expected_output_shape": (B, C), "expected_num_trainable_weights": 4},
    id="softmax_with_loc",
  ),
  pytest.param(
    MCSigmoidDenseFA,
    {"num_outputs": C, "num_factors": 1, "train_mc_samples": 3, "test_mc_samples": 4, "seed": 1},
    _x(),
    {"expected_output_shape": (B, C), "expected_num_trainable_weights": 6},
    id="sigmoid_fa",
  ),
  pytest.param(
    HetXLDense,
    {
      "num_classes": C,
      "num_factors": 2,
      "temperature": 1.3,
      "train_mc_samples": 3,
      "test_mc_samples": 4,
      "seed": 1,
    },
    _x(),
    {"expected_output_shape": (B, C), "expected_num_trainable_weights": 6},
    id="hetxl",
  ),
  pytest.param(
    HetXLDense,
    {"num_classes": C, "num_factors": 0, "train_mc_samples": 2, "test_mc_samples": 2, "seed": 5},
    _x(),
    {"expected_output_shape": (B, C), "expected_num_trainable_weights": 4},
    id="hetxl_diagonal",
  ),
]


@pytest.mark.parametrize("layer_cls, init_kwargs, input_data, expected", HARNESS_CASES)
def test_layer_harness(layer_cls, init_kwargs, input_data, expected, tmp_path):
  run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    tmp_path=tmp_path,
    expected_num_non_trainable_weights=0,
    expected_num_seed_generators=1,
    deterministic=False,
    mixed_precision_output_dtype="float32",
    atol=1e-5,
    **expected,
  )


def _softplus(x):
  return np.logaddexp(0.0, x)


def _diag(layer, x):
  """edward2's diagonal scale: softplus(Dense(x)) + MIN_SCALE_MONTE_CARLO (1e-3)."""
  return _softplus(_dense(layer.diag_layer, x)) + layer.min_scale


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _randomise(layer, seed=1, scale=0.5):
  rng = np.random.default_rng(seed)
  for v in layer.trainable_weights:
    v.assign(scale * rng.normal(size=v.shape).astype("float32"))


def _dense(layer, x):
  return x @ np.asarray(layer.kernel) + np.asarray(layer.bias)


def _silence_noise(layer):
  """Zero factor kernels, softplus(−100) ≈ 0 diagonal scale and no floor: the layer becomes
  μ / τ."""
  layer.min_scale = 0.0
  for sub in (layer.scale_layer, getattr(layer, "scale_layer_heteroscedastic", None)):
    if sub is not None:
      sub.kernel.assign(np.zeros(sub.kernel.shape, "float32"))
      sub.bias.assign(np.zeros(sub.bias.shape, "float32"))
  layer.diag_layer.kernel.assign(np.zeros(layer.diag_layer.kernel.shape, "float32"))
  layer.diag_layer.bias.assign(np.full(layer.diag_layer.bias.shape, -100.0, "float32"))


@pytest.fixture
def fixed_noise(monkeypatch):
  """Replaces `_sample_noise` of a class by NumPy draws; returns the draws per sample count."""

  def install(cls, seed=0):
    drawn = {}

    def fake(self, batch_size, num_samples):
      rng = np.random.default_rng(seed + num_samples)
      rows = 1 if self.share_samples_across_batch else int(batch_size)
      dim = self.embed_dim if isinstance(self, HetXLDense) else self.size
      eps_r = (
        rng.normal(size=(rows, num_samples, self.num_factors)).astype("float32")
        if self.num_factors
        else None
      )
      eps_d = rng.normal(size=(rows, num_samples, dim)).astype("float32")
      drawn[num_samples] = (eps_r, eps_d)
      return (
        None if eps_r is None else keras.ops.convert_to_tensor(eps_r),
        keras.ops.convert_to_tensor(eps_d),
      )

    monkeypatch.setattr(cls, "_sample_noise", fake)
    return drawn

  return install


def _latent_by_hand(layer, x, eps_r, eps_d, loc=None, diag=None):
  mu = _dense(layer.loc_layer, x) if loc is None else loc
  noise = (_diag(layer, x) if diag is None else diag)[:, None] * eps_d
  if layer.num_factors and layer.parameter_efficient:
    v = _dense(layer.scale_layer_heteroscedastic, x)
    noise = noise + v[:, None] * (eps_r @ np.asarray(layer.shared_factor))
  elif layer.num_factors:
    factor = _dense(layer.scale_layer, x).reshape(x.shape[0], layer.size, layer.num_factors)
    noise = noise + np.einsum(
      "bkr,bsr->bsk", factor, np.broadcast_to(eps_r, (x.shape[0],) + eps_r.shape[1:])
    )
  return mu[:, None] + noise


def _log_mean_softmax(tempered):
  lp = _log_softmax(tempered.astype("float64"))
  m = lp.max(1, keepdims=True)
  return (m + np.log(np.exp(lp - m).mean(1, keepdims=True)))[:, 0]


@pytest.mark.parametrize("num_factors,parameter_efficient", [(2, False), (0, False), (3, True)])
def test_softmax_fa_matches_numpy_with_fixed_noise(fixed_noise, num_factors, parameter_efficient):
  drawn = fixed_noise(MCSoftmaxDenseFA)
  layer = MCSoftmaxDenseFA(
    C,
    num_factors=num_factors,
    temperature=0.7,
    train_mc_samples=3,
    test_mc_samples=6,
    parameter_efficient=parameter_efficient,
  )
  x = _x()
  layer(x)
  _randomise(layer)
  for training, s in ((False, 6), (True, 3)):
    out = np.asarray(layer(x, training=training))
    eps_r, eps_d = drawn[s]
    expected = _log_mean_softmax(_latent_by_hand(layer, x, eps_r, eps_d) / 0.7)
    np.testing.assert_allclose(out, expected, atol=1e-5)
  # The noise matters: the output is not the noiseless log softmax(μ / τ).
  assert not np.allclose(out, _log_softmax(_dense(layer.loc_layer, x) / 0.7), atol=1e-2)


def test_zero_noise_equals_log_softmax_of_mean_for_any_sample_count():
  x = _x()
  for s in (1, 7):
    layer = MCSoftmaxDenseFA(C, num_factors=2, temperature=2.0, test_mc_samples=s, seed=0)
    layer(x)
    _randomise(layer)
    _silence_noise(layer)
    mu = _dense(layer.loc_layer, x)
    np.testing.assert_allclose(np.asarray(layer(x)), _log_softmax(mu / 2.0), atol=1e-5)
    # Temperature: the same μ with τ = 1 is sharper and differs.
    assert not np.allclose(np.asarray(layer(x)), _log_softmax(mu), atol=1e-3)


def test_temperature_flattens_the_predictive():
  x = _x()
  entropies = []
  for tau in (0.5, 1.0, 4.0):
    layer = MCSoftmaxDenseFA(C, num_factors=2, temperature=tau, test_mc_samples=50, seed=3)
    layer(x)
    _randomise(layer, seed=5, scale=1.0)
    p = np.exp(np.asarray(layer(x)))
    entropies.append(-(p * np.log(p)).sum(-1).mean())
  assert entropies[0] < entropies[1] < entropies[2]


def test_output_is_normalised_log_probs_and_samples_follow_training_flag():
  layer = MCSoftmaxDenseFA(
    C, num_factors=2, train_mc_samples=3, test_mc_samples=5, return_samples=True, seed=0
  )
  x = _x()
  for training, s in ((True, 3), (False, 5), (None, 5)):
    out, samples = layer(x, training=training)
    out, samples = np.asarray(out), np.asarray(samples)
    assert out.shape == (B, C) and samples.shape == (B, s, C)
    lse = np.log(np.exp(out.astype("float64")).sum(-1))
    np.testing.assert_allclose(lse, 0.0, atol=1e-5)
    np.testing.assert_allclose(out, _log_mean_softmax(samples), atol=1e-5)


@pytest.mark.parametrize("cls", [MCSoftmaxDenseFA, HetXLDense])
def test_shared_samples_give_identical_rows_for_identical_inputs(cls):
  x = np.repeat(_x(b=1), 2, axis=0)
  shared = cls(C, num_factors=2, test_mc_samples=4, seed=0, share_samples_across_batch=True)
  out = np.asarray(shared(x))
  np.testing.assert_allclose(out[0], out[1], atol=1e-6)
  own = cls(C, num_factors=2, test_mc_samples=4, seed=0)
  out = np.asarray(own(x))
  assert not np.allclose(out[0], out[1], atol=1e-4)


def test_loc_passthrough_replaces_the_mean_layer(fixed_noise):
  drawn = fixed_noise(MCSoftmaxDenseFA)
  x = _x()
  loc = np.random.default_rng(7).normal(size=(B, C)).astype("float32") * 3
  layer = MCSoftmaxDenseFA(C, num_factors=2, test_mc_samples=4)
  out = np.asarray(layer(x, loc=loc))
  assert layer.loc_layer is None
  assert all("loc" not in v.path for v in layer.weights)
  eps_r, eps_d = drawn[4]
  np.testing.assert_allclose(
    out, _log_mean_softmax(_latent_by_hand(layer, x, eps_r, eps_d, loc=loc)), atol=1e-5
  )
  _silence_noise(layer)
  np.testing.assert_allclose(np.asarray(layer(x, loc=loc)), _log_softmax(loc), atol=1e-5)
  with pytest.raises(ValueError, match="loc"):
    layer(x)
  with pytest.raises(ValueError, match="loc"):
    MCSoftmaxDenseFA(C, num_factors=2)(x, loc=loc[:, :2])


def test_loc_variance_joins_the_diagonal_noise_at_test_time(fixed_noise):
  # edward2's HeteroscedasticSNGPLayer._compute_scale_param: at test time the diagonal
  # scale is sqrt(het_var_weight · d² + sngp_var_weight · v); in training it is d.
  drawn = fixed_noise(MCSoftmaxDenseFA)
  x = _x()
  rng = np.random.default_rng(3)
  loc = rng.normal(size=(B, C)).astype("float32")
  variance = rng.uniform(0.5, 4.0, size=B).astype("float32")
  layer = MCSoftmaxDenseFA(
    C,
    num_factors=2,
    train_mc_samples=3,
    test_mc_samples=4,
    het_var_weight=0.5,
    loc_var_weight=2.0,
  )
  layer(x, loc=loc, loc_variance=variance)
  _randomise(layer)
  out = np.asarray(layer(x, loc=loc, loc_variance=variance))
  diag = np.sqrt(0.5 * _diag(layer, x) ** 2 + 2.0 * variance[:, None])
  want = _log_mean_softmax(_latent_by_hand(layer, x, *drawn[4], loc=loc, diag=diag))
  np.testing.assert_allclose(out, want, atol=1e-5)
  without = _log_mean_softmax(_latent_by_hand(layer, x, *drawn[4], loc=loc))
  assert not np.allclose(out, without, atol=1e-3)
  trained = np.asarray(layer(x, loc=loc, loc_variance=variance, training=True))
  np.testing.assert_allclose(
    trained, _log_mean_softmax(_latent_by_hand(layer, x, *drawn[3], loc=loc)), atol=1e-5
  )


def test_min_scale_floors_the_diagonal_noise():
  x = _x()
  layer = MCSoftmaxDenseFA(C, num_factors=0, test_mc_samples=2000, seed=0, return_samples=True)
  layer(x)
  layer.diag_layer.kernel.assign(np.zeros(layer.diag_layer.kernel.shape, "float32"))
  layer.diag_layer.bias.assign(np.full(layer.diag_layer.bias.shape, -100.0, "float32"))
  _, samples = layer(x)
  # softplus(−100) ≈ 0: the latent logits still spread with standard deviation 1e-3.
  np.testing.assert_allclose(np.asarray(samples).std(1), 1e-3, rtol=0.1)
  with pytest.raises(ValueError, match="min_scale"):
    MCSoftmaxDenseFA(C, num_factors=0, min_scale=-1.0)


def test_sigmoid_fa_matches_numpy_with_fixed_noise(fixed_noise):
  drawn = fixed_noise(MCSigmoidDenseFA)
  layer = MCSigmoidDenseFA(C, num_factors=2, temperature=1.5, test_mc_samples=5)
  x = _x()
  layer(x)
  _randomise(layer, scale=1.0)
  out = np.asarray(layer(x))
  eps_r, eps_d = drawn[5]
  u = _latent_by_hand(layer, x, eps_r, eps_d).astype("float64") / 1.5
  p = (1.0 / (1.0 + np.exp(-u))).mean(1)
  np.testing.assert_allclose(out, np.log(p) - np.log1p(-p), atol=1e-4)


def test_sigmoid_zero_noise_is_stable_for_large_logits():
  x = _x()
  layer = MCSigmoidDenseFA(C, num_factors=1, test_mc_samples=3, temperature=0.5, seed=0)
  layer(x)
  _silence_noise(layer)
  layer.loc_layer.kernel.assign(np.zeros((D, C), "float32"))
  layer.loc_layer.bias.assign(np.array([60.0, -60.0, 0.5, -2.0], "float32"))
  out = np.asarray(layer(x))
  assert np.all(np.isfinite(out))  # Naive log(p̄) − log(1 − p̄) gives ±inf here.
  np.testing.assert_allclose(out, np.tile([120.0, -120.0, 1.0, -4.0], (B, 1)), rtol=1e-5)


def _hetxl_by_hand(layer, x, eps_r, eps_d, tau):
  d = _diag(layer, x)
  eps_d = np.broadcast_to(eps_d, (x.shape[0],) + eps_d.shape[1:])
  z = x[:, None] + d[:, None] * eps_d
  if layer.num_factors:
    factor = _dense(layer.scale_layer, x).reshape(x.shape[0], D, layer.num_factors)
    eps_r = np.broadcast_to(eps_r, (x.shape[0],) + eps_r.shape[1:])
    z = z + np.einsum("bdr,bsr->bsd", factor, eps_r)
  return _log_mean_softmax(_dense(layer.classifier, z) / tau)


@pytest.mark.parametrize("num_factors, shared", [(2, False), (0, False), (2, True), (0, True)])
def test_hetxl_matches_numpy_with_fixed_noise(fixed_noise, num_factors, shared):
  # Shared: S = 5 >= C = 4 takes the [S, D] @ [B, D, C] path at test time, S = 2 the other.
  drawn = fixed_noise(HetXLDense)
  layer = HetXLDense(
    C,
    num_factors=num_factors,
    temperature=0.8,
    train_mc_samples=2,
    test_mc_samples=5,
    share_samples_across_batch=shared,
  )
  x = _x()
  layer(x)
  _randomise(layer)
  assert layer.classifier.kernel.shape == (D, C)
  assert layer.diag_layer.kernel.shape == (D, D)
  for training, s in ((False, 5), (True, 2)):
    out = np.asarray(layer(x, training=training))
    np.testing.assert_allclose(out, _hetxl_by_hand(layer, x, *drawn[s], 0.8), atol=1e-5)


def test_hetxl_zero_noise_and_samples():
  x = _x()
  layer = HetXLDense(
    C,
    num_factors=2,
    temperature=1.5,
    train_mc_samples=2,
    test_mc_samples=3,
    return_samples=True,
    seed=0,
  )
  out, samples = layer(x, training=True)
  assert samples.shape == (B, 2, C)
  np.testing.assert_allclose(np.log(np.exp(np.asarray(out, "float64")).sum(-1)), 0.0, atol=1e-5)
  _silence_noise(layer)
  out, samples = layer(x)
  assert samples.shape == (B, 3, C)
  np.testing.assert_allclose(
    np.asarray(out), _log_softmax(_dense(layer.classifier, x) / 1.5), atol=1e-5
  )


@pytest.mark.parametrize("num_factors", [2, 0])
def test_hetxl_covariance_log_det_matches_slogdet(num_factors):
  x = _x()
  layer = HetXLDense(C, num_factors=num_factors, seed=0)
  layer(x)
  _randomise(layer, scale=0.7)
  got = np.asarray(layer.covariance_log_det(x))
  assert got.shape == (B,)
  x64 = x.astype("float64")
  d = _diag(layer, x64)
  for i in range(B):
    cov = np.diag(d[i] ** 2)
    if num_factors:
      v = _dense(layer.scale_layer, x64)[i].reshape(D, num_factors)
      cov = cov + v @ v.T
    sign, expected = np.linalg.slogdet(cov)
    assert sign > 0
    np.testing.assert_allclose(got[i], expected, rtol=1e-4, atol=1e-4)


def test_training_step_updates_noise_parameters():
  x = _x(b=8)
  y = np.arange(8) % C
  inp = keras.Input((D,))
  layer = MCSoftmaxDenseFA(C, num_factors=2, train_mc_samples=4, test_mc_samples=4, seed=0)
  model = keras.Model(inp, layer(inp))
  model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  before = np.asarray(layer.scale_layer.kernel).copy()
  history = model.fit(x, y, epochs=1, batch_size=8, verbose=0)
  assert np.isfinite(history.history["loss"][0])
  assert not np.allclose(before, np.asarray(layer.scale_layer.kernel))


@pytest.mark.parametrize("cls", [MCSoftmaxDenseFA, MCSigmoidDenseFA])
def test_factor_analysis_errors(cls):
  with pytest.raises(ValueError, match="num_factors=4 must be smaller"):
    cls(4, num_factors=4)
  with pytest.raises(ValueError, match="num_factors=9 must be smaller"):
    cls(4, num_factors=9)
  with pytest.raises(ValueError, match="num_factors must be an int >= 0.*-1"):
    cls(4, num_factors=-1)


@pytest.mark.parametrize("cls", [MCSoftmaxDenseFA, MCSigmoidDenseFA, HetXLDense])
def test_common_errors(cls):
  with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
    cls(4, num_factors=1, temperature=0.0)
  with pytest.raises(ValueError, match="temperature must be > 0, got -1"):
    cls(4, num_factors=1, temperature=-1.0)
  with pytest.raises(ValueError, match="train_mc_samples must be an int >= 1, got 0"):
    cls(4, num_factors=1, train_mc_samples=0)
  with pytest.raises(ValueError, match="test_mc_samples must be an int >= 1, got 0"):
    cls(4, num_factors=1, test_mc_samples=0)
  with pytest.raises(ValueError, match="num_factors must be an int >= 0"):
    cls(4, num_factors=-2)
