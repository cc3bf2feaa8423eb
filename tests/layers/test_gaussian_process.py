"""Random-feature GP layer and mean-field logits: the shared harness, features, precision and
variance by hand."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_unc.layers.gaussian_process import (
  MeanFieldLogits,
  OrthogonalRandomFeatures,
  RandomFeatureGaussianProcess,
  refresh_covariance_caches,
  ub_length_scale,
)
from keras_unc.runtime import checkpoints
from keras_unc.training import export
from tests.layers.helpers import run_layer_test

D_IN, D, C = 3, 16, 4


def _x(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _gp(**kwargs):
  kwargs = {"num_inducing": D, "seed": 3, **kwargs}
  layer = RandomFeatureGaussianProcess(kwargs.pop("units", C), **kwargs)
  layer.build((None, D_IN))
  return layer


def _phi(layer, x, scale=False):
  w, b = layer.random_kernel.numpy(), layer.random_bias.numpy()
  phi = np.cos(x @ w + b)
  return phi * math.sqrt(2.0 / layer.num_inducing) if scale else phi


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# Weight counts by hand. The GP layer: trainable β [D, C] (+ output bias [C], + the input
# LayerNormalization's gamma and beta); non-trainable random kernel [D_in, D], random bias [D]
# and precision matrix [D, D]. MeanFieldLogits has none.
HARNESS_CASES = [
  pytest.param(
    RandomFeatureGaussianProcess,
    {"units": C, "num_inducing": D, "seed": 3},
    _x((5, D_IN)),
    {
      "expected_output_shape": ((5, C), (5,)),
      "expected_num_trainable_weights": 1,
      "expected_num_non_trainable_weights": 3,
    },
    id="gp",
  ),
  pytest.param(
    RandomFeatureGaussianProcess,
    {
      "units": 1,
      "num_inducing": D,
      "gp_cov_momentum": 0.9,
      "likelihood": "logistic",
      "output_bias": True,
      "scale_random_features": False,
      "seed": 4,
    },
    _x((5, D_IN)),
    {
      "expected_output_shape": ((5, 1), (5,)),
      "expected_num_trainable_weights": 2,
      "expected_num_non_trainable_weights": 3,
    },
    id="gp_logistic_momentum_bias",
  ),
  pytest.param(
    MeanFieldLogits,
    {"mean_field_factor": 0.5},
    (_x((3, C)), np.array([0.0, 1.0, 4.0], "float32")),
    {
      "expected_output_shape": (3, C),
      "expected_num_trainable_weights": 0,
      "expected_num_non_trainable_weights": 0,
    },
    id="mean_field_logits",
  ),
]


@pytest.mark.parametrize("layer_cls, init_kwargs, input_data, expected", HARNESS_CASES)
def test_layer_harness(layer_cls, init_kwargs, input_data, expected, tmp_path):
  run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    tmp_path=tmp_path,
    expected_num_seed_generators=0,
    mixed_precision_output_dtype="bfloat16",
    atol=1e-5,
    **expected,
  )


def test_random_feature_distribution():
  layer = RandomFeatureGaussianProcess(
    2, num_inducing=512, kernel_scale=2.0, random_features="gaussian", seed=0
  )
  layer.build((None, 8))
  w, b = layer.random_kernel.numpy(), layer.random_bias.numpy()
  assert abs(w.std() - 0.5) < 0.03 and abs(w.mean()) < 0.03  # W ~ N(0, 1/ℓ²), ℓ = 2.
  assert b.min() >= 0 and b.max() <= 2 * math.pi and abs(b.mean() - math.pi) < 0.3
  assert not layer.random_kernel.trainable and not layer.random_bias.trainable
  assert layer.beta.trainable and not layer.precision_matrix.trainable


@pytest.mark.parametrize("scale, normalize, bias", [(True, False, False), (False, True, True)])
def test_logits_are_features_times_beta(scale, normalize, bias):
  layer = _gp(scale_random_features=scale, normalize_input=normalize, output_bias=bias)
  if bias:
    layer.bias.assign(np.arange(C, dtype="float32"))
  x = _x((5, D_IN))
  h = x
  if normalize:  # LayerNormalization at init: gamma = 1, beta = 0.
    eps = layer.input_norm.epsilon
    h = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
  expected = _phi(layer, h, scale) @ layer.beta.numpy()
  if bias:
    expected += np.arange(C)
  logits, variance = layer(x)
  assert logits.shape == (5, C) and variance.shape == (5,)
  np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5)


def test_exact_precision_accumulates_and_variance_by_hand():
  # edward2's LaplaceRandomFeatureCovariance: P starts at 0, v = s φᵀ (s I + P)⁻¹ φ.
  ridge = 0.5
  layer = _gp(gp_cov_ridge_penalty=ridge)
  np.testing.assert_array_equal(layer.precision_matrix.numpy(), np.zeros((D, D)))
  batches = [_x((4, D_IN), seed=s) for s in range(3)]
  expected = np.zeros((D, D))
  for x in batches:
    logits, variance = layer(x, training=True)
    np.testing.assert_array_equal(np.asarray(variance), np.zeros(4))
    phi = _phi(layer, x)
    expected += phi.T @ phi
  np.testing.assert_allclose(layer.precision_matrix.numpy(), expected, rtol=1e-5, atol=1e-6)
  x = _x((6, D_IN), seed=9)
  phi = _phi(layer, x)
  cov = np.linalg.inv(ridge * np.eye(D) + expected.astype("float64"))
  var_expected = ridge * np.einsum("bi,ij,bj->b", phi, cov, phi)
  _, variance = layer(x)
  np.testing.assert_allclose(np.asarray(variance), var_expected, rtol=1e-4)
  assert np.asarray(variance).min() > 0
  layer.reset_covariance()
  np.testing.assert_array_equal(layer.precision_matrix.numpy(), np.zeros((D, D)))
  _, variance = layer(x)  # P = 0: v = s · φᵀ φ / s = ‖φ‖².
  np.testing.assert_allclose(np.asarray(variance), (phi**2).sum(-1), rtol=1e-5)


def test_momentum_recursion_by_hand():
  m = 0.9
  layer = _gp(gp_cov_momentum=m)
  expected = np.zeros((D, D))
  for s, batch in enumerate([4, 3, 5]):
    x = _x((batch, D_IN), seed=s)
    layer(x, training=True)
    phi = _phi(layer, x)
    expected = m * expected + (1 - m) * phi.T @ phi / batch
  np.testing.assert_allclose(layer.precision_matrix.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("units", [C, 1])
def test_logistic_likelihood_weights_by_p_one_minus_p(units):
  layer = _gp(likelihood="logistic", units=units)
  layer.beta.assign(_x((D, units), seed=5) * 3)
  x = _x((5, D_IN))
  logits, _ = layer(x, training=True)
  phi, logits = _phi(layer, x), np.asarray(logits)
  p = 1 / (1 + np.exp(-logits[:, 0])) if units == 1 else _softmax(logits).max(-1)
  expected = phi.T @ (phi * (p * (1 - p))[:, None])
  np.testing.assert_allclose(layer.precision_matrix.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_mean_field_logits_by_hand():
  logits = _x((3, C))
  variance = np.array([0.0, 1.0, 4.0], "float32")
  out = np.asarray(MeanFieldLogits()((logits, variance)))
  np.testing.assert_allclose(out, logits / np.sqrt(1 + math.pi / 8 * variance)[:, None], rtol=1e-6)
  np.testing.assert_allclose(
    np.asarray(MeanFieldLogits(2.0)((logits, variance))),
    logits / np.sqrt(1 + 2 * variance)[:, None],
    rtol=1e-6,
  )
  np.testing.assert_array_equal(np.asarray(MeanFieldLogits(-1.0)((logits, variance))), logits)


def test_keras_round_trip_keeps_the_trained_precision_and_variance(tmp_path):
  # Layer norm, output bias, regularizer: trainable β, bias, LayerNorm gamma and beta.
  kwargs = {
    "units": C,
    "num_inducing": D,
    "normalize_input": True,
    "output_bias": True,
    "gp_cov_ridge_penalty": 2.0,
    "kernel_scale": 1.5,
    "kernel_regularizer": "l2",
    "seed": 1,
  }
  x = _x((4, D_IN), seed=7)
  report = run_layer_test(
    RandomFeatureGaussianProcess,
    kwargs,
    x,
    tmp_path=tmp_path,
    expected_output_shape=((4, C), (4,)),
    expected_num_trainable_weights=4,
    expected_num_non_trainable_weights=3,
    atol=1e-5,
  )
  # The harness trains one step before saving: P moved away from 0 and came back.
  gp, again = report.layer, report.loaded_layer
  assert np.abs(gp.precision_matrix.numpy()).max() > 1e-3
  np.testing.assert_array_equal(again.precision_matrix.numpy(), gp.precision_matrix.numpy())
  variance, variance_again = np.asarray(gp(x)[1]), np.asarray(again(x)[1])
  assert variance.min() > 0
  np.testing.assert_allclose(variance_again, variance, rtol=1e-6)


@pytest.mark.parametrize("momentum", [-1.0, 0.9])
def test_mirrored_precision_equals_one_device_for_same_global_batch(momentum):
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  with strategy.scope():
    layer = _gp(gp_cov_momentum=momentum, likelihood="logistic")
  ref = _gp(gp_cov_momentum=momentum, likelihood="logistic")
  ref.set_weights([w.numpy() for w in layer.weights])
  x = _x((6, D_IN))
  dist_x = strategy.experimental_distribute_values_from_function(
    lambda ctx: x[3 * ctx.replica_id_in_sync_group : 3 * ctx.replica_id_in_sync_group + 3]
  )
  step = tf.function(lambda inputs: layer(inputs, training=True)[0])
  for _ in range(2):
    strategy.run(step, args=(dist_x,))
    ref(x, training=True)
  assert np.abs(ref.precision_matrix.numpy()).max() > 1e-3
  for replica_value in strategy.experimental_local_results(layer.precision_matrix.value):
    np.testing.assert_allclose(
      replica_value.numpy(), ref.precision_matrix.numpy(), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"num_inducing": 0}, "num_inducing"),
    ({"likelihood": "poisson"}, "likelihood"),
    ({"gp_cov_momentum": 0.0}, "gp_cov_momentum"),
    ({"gp_cov_momentum": 1.0}, "gp_cov_momentum"),
    ({"gp_cov_momentum": -0.5}, "gp_cov_momentum"),
    ({"gp_cov_ridge_penalty": 0.0}, "gp_cov_ridge_penalty"),
    ({"kernel_scale": 0.0}, "kernel_scale"),
    ({"units": 0}, "units"),
    ({"random_features": "rff"}, "random_features"),
    ({"solve_dtype": "float16"}, "solve_dtype"),
  ],
)
def test_invalid_arguments(kwargs, match):
  kwargs = {"units": 2, **kwargs}
  with pytest.raises(ValueError, match=match):
    RandomFeatureGaussianProcess(kwargs.pop("units"), **kwargs)


@pytest.mark.parametrize("d_in, d", [(8, 20), (16, 5)])
def test_orthogonal_random_features(d_in, d):
  w = np.asarray(OrthogonalRandomFeatures(stddev=0.5, seed=1)((d_in, d)))
  assert w.shape == (d_in, d)
  directions = w / np.linalg.norm(w, axis=0)
  # Columns within each block of d_in are orthonormal directions (edward2's construction).
  for start in range(0, d, d_in):
    block = directions[:, start : start + d_in]
    np.testing.assert_allclose(block.T @ block, np.eye(block.shape[1]), atol=1e-5)
  again = np.asarray(OrthogonalRandomFeatures(stddev=0.5, seed=1)((d_in, d)))
  np.testing.assert_array_equal(w, again)
  fixed = np.asarray(OrthogonalRandomFeatures(stddev=0.5, random_norm=False, seed=1)((d_in, d)))
  np.testing.assert_allclose(np.linalg.norm(fixed, axis=0), 0.5 * math.sqrt(d_in), rtol=1e-5)


def test_orthogonal_feature_norms_match_a_gaussian_matrix():
  # E‖w_j‖² = stddev² · d_in, as for a Gaussian column (chi-distributed norms).
  w = np.asarray(OrthogonalRandomFeatures(stddev=0.5, seed=0)((16, 4096)))
  np.testing.assert_allclose((w**2).sum(0).mean(), 0.25 * 16, rtol=0.05)
  layer = _gp(num_inducing=64)  # The layer's default is orthogonal.
  k = layer.random_kernel.numpy()
  k = k / np.linalg.norm(k, axis=0)
  np.testing.assert_allclose(k[:, :D_IN].T @ k[:, :D_IN], np.eye(D_IN), atol=1e-5)


def _edward2_rfgp(x, w_ub, b, beta, gp_scale, ridge, train_batches, mean_field):
  """NumPy transcription of edward2's TF `RandomFeatureGaussianProcess` as ub builds it
  (`resnet50_sngp.py`: `normalize_input=False`, `scale_random_features=False`, custom
  random features `cos(x W + b)`, no output bias, momentum -1) followed by ub's
  `mean_field_logits`."""

  def features(h):
    return np.cos((h * (1.0 / np.sqrt(gp_scale))) @ w_ub + b)

  precision = np.zeros((w_ub.shape[1],) * 2)
  for batch in train_batches:
    phi = features(batch)
    precision = precision + phi.T @ phi
  covariance = np.linalg.inv(ridge * np.eye(len(precision)) + precision)
  phi = features(x)
  logits = phi @ beta
  variance = np.diag(phi @ (covariance @ phi.T * ridge))
  return logits / np.sqrt(1.0 + mean_field * variance)[:, None], variance


def test_matches_ub_sngp_layer_on_copied_weights():
  # ub: gp_scale = 2, ORF kernel of standard deviation 0.05. Here: kernel_scale =
  # ub_length_scale(2) = 20·sqrt(2) and W = W_ub / sqrt(gp_scale).
  gp_scale, ridge, mean_field = 2.0, 1.0, 1.0
  assert ub_length_scale(gp_scale) == pytest.approx(20.0 * math.sqrt(2.0))
  assert ub_length_scale(gp_scale, gp_input_normalization=True) == pytest.approx(20.0)
  layer = _gp(kernel_scale=ub_length_scale(gp_scale), gp_cov_ridge_penalty=ridge, num_inducing=32)
  rng = np.random.default_rng(0)
  w_ub = np.asarray(OrthogonalRandomFeatures(stddev=0.05, seed=5)((D_IN, 32)))
  b = rng.uniform(0, 2 * np.pi, 32).astype("float32")
  beta = rng.normal(size=(32, C)).astype("float32")
  layer.random_kernel.assign(w_ub / np.sqrt(gp_scale))
  layer.random_bias.assign(b)
  layer.beta.assign(beta)
  inputs = [(20 * _x((8, D_IN), seed=s)) for s in range(3)]
  for batch in inputs:
    layer(batch, training=True)
  x = 20 * _x((6, D_IN), seed=11)
  logits, variance = layer(x)
  adjusted = MeanFieldLogits(mean_field)((logits, variance))
  want_logits, want_var = _edward2_rfgp(x, w_ub, b, beta, gp_scale, ridge, inputs, mean_field)
  np.testing.assert_allclose(np.asarray(variance), want_var, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(adjusted), want_logits, rtol=1e-4, atol=1e-5)
  # The same length-scale in distribution: W ~ 0.05 · W₀ / sqrt(gp_scale).
  wide = _gp(kernel_scale=ub_length_scale(gp_scale), num_inducing=4096).random_kernel.numpy()
  np.testing.assert_allclose(wide.std(), 0.05 / math.sqrt(gp_scale), rtol=0.05)


def test_variance_is_stable_for_an_ill_conditioned_precision():
  # Many copies of a few feature vectors: P has rank 2 and eigenvalues ~1e4, s = 1e-2
  # (condition number ~1e6, an epoch of a large dataset reaches this). The float64 host
  # factorisation (default) gives v to 1e-3 of the exact value for the stored P; a float32
  # one does not.
  ridge = 1e-2
  x = np.repeat(_x((2, D_IN), seed=3), 1000, axis=0)
  got = {}
  for dtype in ("float64", "float32"):
    layer = _gp(gp_cov_ridge_penalty=ridge, solve_dtype=dtype)
    layer(x, training=True)
    probe = _x((3, D_IN), seed=4)
    phi = _phi(layer, probe).astype("float64")
    p = layer.precision_matrix.numpy().astype("float64")
    want = ridge * np.einsum("bi,bi->b", phi, np.linalg.solve(ridge * np.eye(D) + p, phi.T).T)
    try:
      got[dtype] = np.asarray(layer(probe)[1])
    except (ValueError, tf.errors.InvalidArgumentError):  # float32 Cholesky can fail.
      got[dtype] = np.full(3, np.nan)
  assert np.linalg.cond(ridge * np.eye(D) + p) > 1e5
  np.testing.assert_allclose(got["float64"], want, rtol=1e-3)
  assert not np.allclose(got["float32"], want, rtol=1e-3)


# Covariance cache: inference reads L⁻ᵀ of s I + P instead of factorising it on every call.


def _variance_by_hand(layer, x, ridge):
  phi = _phi(layer, x).astype("float64")
  p = layer.precision_matrix.numpy().astype("float64")
  return ridge * np.einsum("bi,bi->b", phi, np.linalg.solve(ridge * np.eye(D) + p, phi.T).T)


@pytest.mark.parametrize("momentum", [-1.0, 0.9])
def test_cached_variance_equals_the_solve_and_follows_every_change_of_p(momentum, monkeypatch):
  ridge = 0.5
  layer = _gp(gp_cov_ridge_penalty=ridge, gp_cov_momentum=momentum)
  probe = _x((5, D_IN), seed=11)
  graph = tf.function(lambda x: layer(x)[1])  # Traced once: checks P at run time.
  factorisations = []
  factor = layer.host_factor
  monkeypatch.setattr(layer, "host_factor", lambda p: factorisations.append(1) or factor(p))

  def is_fresh():
    return np.array_equal(layer.precision_matrix.numpy(), layer._cache.precision.numpy())

  def check(stale):
    factorisations.clear()
    want = _variance_by_hand(layer, probe, ridge)
    # A traced call never factorises on the host: a stale cache is solved on the device in
    # float32 (and stays stale), a fresh one is read.
    np.testing.assert_allclose(graph(probe).numpy(), want, rtol=1e-5)
    assert is_fresh() != stale and not factorisations
    # An eager call refreshes a stale cache on the host (once), then reads it.
    np.testing.assert_allclose(np.asarray(layer(probe)[1]), want, rtol=1e-6)
    assert len(factorisations) == int(stale) and is_fresh()
    np.testing.assert_allclose(graph(probe).numpy(), want, rtol=1e-6)

  check(stale=True)  # A new layer's cache is stale.
  for seed in range(2):  # Training updates P: stale until refreshed.
    layer(_x((4, D_IN), seed=seed), training=True)
    check(stale=True)
    check(stale=False)
  layer(_x((4, D_IN), seed=7), training=True)
  assert layer.refresh_covariance_cache() and not layer.refresh_covariance_cache()
  check(stale=False)
  assert np.abs(layer.precision_matrix.numpy()).max() > 1e-3
  layer.precision_matrix.assign(layer.precision_matrix.numpy() * 2.0)  # Any write (restore).
  check(stale=True)
  layer.reset_covariance()
  check(stale=True)


def test_host_factor_serves_the_float64_variance_of_an_ill_conditioned_precision(tmp_path):
  # The TPU-safe path: float64 factorisation on the host, float32 on the device (the cached
  # factor, the XLA-compiled call and the SavedModel) equal the float64 solve to 1e-5.
  ridge = 1e-2
  layer = _gp(gp_cov_ridge_penalty=ridge, name="gp")
  layer(np.repeat(_x((2, D_IN), seed=3), 1000, axis=0), training=True)
  probe = _x((7, D_IN), seed=4)
  p = layer.precision_matrix.numpy().astype("float64")
  assert np.linalg.cond(ridge * np.eye(D) + p) > 1e5
  want = _variance_by_hand(layer, probe, ridge)
  assert layer.refresh_covariance_cache()
  assert layer._cache.factor.dtype == tf.float32
  xla = tf.function(lambda x: layer(x)[1], jit_compile=True)
  np.testing.assert_allclose(xla(probe).numpy(), want, rtol=1e-5)
  hlo = xla.experimental_get_compiler_ir(probe)(stage="hlo")
  assert "f64[" not in hlo, [line for line in hlo.splitlines() if "f64[" in line][:3]
  inputs = keras.Input((D_IN,))
  model = keras.Model(inputs, {"variance": layer(inputs)[1]})
  path = export.export_saved_model(model, str(tmp_path / "export"), (D_IN,), tf.float32)
  served = tf.saved_model.load(path).signatures["serving_default"]
  got = served(images=tf.constant(probe))["variance"].numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_a_precision_that_is_not_positive_definite_is_a_clear_error():
  layer = _gp(gp_cov_ridge_penalty=1e-3, solve_dtype="float32")
  layer.precision_matrix.assign(-np.eye(D, dtype="float32"))  # s I + P = -0.999 I.
  with pytest.raises(ValueError, match="not positive definite.*Raise gp_cov_ridge_penalty"):
    layer.refresh_covariance_cache()
  assert np.isnan(layer._cache.precision.numpy()).all()  # The cache is left as it was.


def _gp_model(seed=3):
  inputs = keras.Input((D_IN,))
  logits, variance = RandomFeatureGaussianProcess(
    C, num_inducing=D, gp_cov_ridge_penalty=0.5, seed=seed, name="gp"
  )(inputs)
  return keras.Model(inputs, {"logits": logits, "variance": variance})


def _graph_op_types(concrete):
  graph_def = concrete.graph.as_graph_def()
  ops = {node.op for node in graph_def.node}
  for function in graph_def.library.function:
    ops.update(node.op for node in function.node_def)
  return ops


def test_cache_is_no_weight_and_a_restored_checkpoint_gives_the_same_outputs(tmp_path):
  model, x = _gp_model(), _x((6, D_IN), seed=5)
  gp = model.get_layer("gp")
  gp(_x((8, D_IN), seed=1), training=True)
  assert refresh_covariance_caches(model) == 1
  before = model(x)
  cache_ids = {id(v) for v in gp.covariance_cache_variables}
  assert len(cache_ids) == 2 and len(model.variables) == 4  # Kernel, bias, β, P.
  # The trainer's save and restore, into a model with other random features and P = 0.
  optimizer = keras.optimizers.SGD()
  optimizer.build(model.trainable_variables)
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  ckpt.save(1, model, optimizer)
  other = _gp_model(seed=9)
  other(x)
  other_gp = other.get_layer("gp")
  other_gp.refresh_covariance_cache()  # A fresh cache of the old P: the restore outdates it.
  _, arrays, _ = ckpt.load_latest()
  checkpoints.restore(other, None, arrays, "test")
  traced = tf.function(lambda images: other(images))  # Stale cache: the device solve.
  for key in ("logits", "variance"):
    np.testing.assert_allclose(traced(x)[key].numpy(), np.asarray(before[key]), rtol=1e-5)
  assert other_gp.refresh_covariance_cache() and not other_gp.refresh_covariance_cache()
  for key in ("logits", "variance"):  # Eager and traced calls read the refreshed cache.
    np.testing.assert_allclose(np.asarray(other(x)[key]), np.asarray(before[key]), rtol=1e-6)
    np.testing.assert_allclose(traced(x)[key].numpy(), np.asarray(before[key]), rtol=1e-6)


def test_export_serves_from_the_cache_without_a_cholesky(tmp_path):
  model, x = _gp_model(), _x((6, D_IN), seed=5)
  gp = model.get_layer("gp")
  gp(_x((8, D_IN), seed=1), training=True)  # Stale cache: the export refreshes it.
  path = export.export_saved_model(model, str(tmp_path / "export"), (D_IN,), tf.float32)
  assert not gp._serve_cached  # In-process calls check P again after the export.
  served = tf.saved_model.load(path).signatures["serving_default"]
  out = served(images=tf.constant(x))
  want = _variance_by_hand(gp, x, 0.5)
  np.testing.assert_allclose(out["variance"].numpy(), want, rtol=1e-6)
  np.testing.assert_allclose(out["logits"].numpy(), np.asarray(model(x)["logits"]), rtol=1e-6)
  served_ops = _graph_op_types(served)
  assert "MatMul" in served_ops or "BatchMatMulV2" in served_ops
  assert not served_ops & {"Cholesky", "MatrixTriangularSolve"}, served_ops
  # The in-process graph keeps the solve for a stale cache (so the check above can fail).
  in_process = tf.function(lambda images: model(images)).get_concrete_function(
    tf.TensorSpec([None, D_IN], tf.float32)
  )
  assert "Cholesky" in _graph_op_types(in_process)


def test_mirrored_inference_reads_the_refreshed_cache():
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  with strategy.scope():
    layer = _gp(gp_cov_ridge_penalty=0.5)
  x = _x((6, D_IN))
  dist_x = strategy.experimental_distribute_values_from_function(
    lambda ctx: x[3 * ctx.replica_id_in_sync_group : 3 * ctx.replica_id_in_sync_group + 3]
  )
  strategy.run(tf.function(lambda inputs: layer(inputs, training=True)[0]), args=(dist_x,))
  infer = tf.function(lambda inputs: layer(inputs)[1])
  want = _variance_by_hand(layer, x, 0.5)
  for refresh in (False, True):  # Stale: each replica solves in float32; then the cache.
    if refresh:
      assert layer.refresh_covariance_cache()
    found = strategy.experimental_local_results(strategy.run(infer, args=(dist_x,)))
    rtol = 1e-6 if refresh else 1e-5
    np.testing.assert_allclose(np.concatenate([f.numpy() for f in found]), want, rtol=rtol)
  for replica_value in strategy.experimental_local_results(layer._cache.factor):
    np.testing.assert_array_equal(replica_value.numpy(), layer._cache.factor.numpy())


def test_solve_dtype_default_is_the_float64_host_factorisation_under_tensorflow():
  layer = RandomFeatureGaussianProcess(C)
  assert layer.solve_dtype == "float64" and layer.get_config()["solve_dtype"] is None
  assert RandomFeatureGaussianProcess(C, solve_dtype="float32").solve_dtype == "float32"
