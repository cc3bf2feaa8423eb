"""Mixed precision for every registered method: `mixed_bfloat16` and `mixed_float16` (with
dynamic loss scaling) train and evaluate like float32, and the numerically sensitive state
stays float32.

`test_method_under_mixed_precision[<method>]` trains the method on the tiny config
(`gin_configs/testing/tiny.gin`, 4 steps) under float32, mixed_bfloat16 and mixed_float16
with the same seed, and checks from those three runs: finite training losses; the first
step's loss and the test metrics within `TOLERANCE` of float32; every output of the network
float32; every float variable float32; and, spied during one training and one inference
forward pass, the dtypes of the sensitive tensors (GP features, precision update and
variance; heteroscedastic scales, factors and sampled logits; spectral-norm power
iteration; HET-XL log-determinant; mean-field logits).
"""

import functools
import math
import os
import shutil

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_unc import config, methods
from keras_unc.layers.gaussian_process import MeanFieldLogits, RandomFeatureGaussianProcess
from keras_unc.layers.heteroscedastic import HetXLDense, _MCHeteroscedasticBase
from keras_unc.layers.spectral_norm import SpectralNormalization
from keras_unc.runtime import checkpoints
from keras_unc.training import optim
from keras_unc.training import trainer as train_lib
from tests.e2e.helpers import CLASSES, TINY

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
MIXED = POLICIES[1:]

# |mixed - float32| after 2 steps from the same initial weights (same seed), on the 297
# digits test images. Measured, largest over the 11 methods (docs/tpu.md): bfloat16 0.0029
# first-step loss, 0.0034 accuracy (1 image), 0.0024 NLL, 0.0046 ECE; float16 0.0004, 0,
# 0.0004, 0.0014. The tolerances leave 3-6x room for other CPUs' bfloat16 kernels.
TOLERANCE = {"first_loss": 0.01, "accuracy": 0.02, "nll": 0.01, "ece": 0.02}

COMMON = [
  "train.total_steps = 2",
  "train.eval_every = 2",
  "train.checkpoint_every = 2",
  "train.eval_batch_size = 512",
  "train.export_at_end = False",
  "train.evaluators = [@ClassificationEvaluator()]",
  "ClassificationEvaluator.plot = False",
  "het_head.num_factors = 3",
  "het_head.train_mc_samples = 4",
  "het_head.test_mc_samples = 8",
  "gp_head.num_inducing = 32",
  "ensemble.ensemble_size = 2",
  "BatchEnsemble.ensemble_size = 2",
  "ShallowEnsemble.num_heads = 2",
  "MCDropout.num_samples = 2",
  "MIMO.ensemble_size = 2",
  "MIMO.batch_repetitions = 2",
  "Packed.num_estimators = 2",
  "make_optimizer.name = 'sgd'",  # Fewer optimizer ops per eager step than AdamW.
  "make_optimizer.learning_rate = 0.1",
]
# URL with the HET-XL log-det module (the module with a Cholesky), as its recipe
# `experiments/url/vitm16_hetxl.gin` trains it.
EXTRA = {
  "rank1": ["Rank1.ensemble_size = 2", "Rank1.dataset_size = 64"],
  "variational": ["Variational.num_eval_samples = 2", "Variational.dataset_size = 64"],
  "swag": ["SWAG.max_num_models = 2", "SWAG.num_samples = 2"],
  # Packed-Ensembles needs a convolutional or MLP backbone, not tiny.gin's ViT: the MLP
  # without dropout (a ResNet still at chance after 2 steps flips more test argmaxes
  # between dtypes than TOLERANCE allows).
  "packed": [
    "build_network.backbone = @mlp",
    "mlp.width = 32",
    "mlp.depth = 2",
    "mlp.dropout = 0.0",
  ],
  "url": [
    "URL.module = 'hetxl_det'",
    "URL.head = @het_head()",
    "het_head.xl = True",
    "URL.loss = 'cross_entropy'",  # As the URL recipe with this module (vitm16_hetxl.gin).
    "URL.unc_start_value = 0.0",
  ],
}

# What each method must contain: spied computations (class, method) that must have run, and
# variable-name endings that must exist, each asserted float32.
SN, GP, MF = "spectral_norm", "gp", "mean_field"
HET, LOGDET = "het", "log_det"
SENSITIVE = {
  "deterministic": (set(), ()),
  "batchensemble": (set(), ("alpha", "gamma")),
  "sngp": ({SN, GP, MF}, ("precision_matrix", "/u")),
  "heteroscedastic": ({HET}, ()),
  "hetxl": ({HET}, ()),
  "mc_dropout": (set(), ()),
  "shallow_ensemble": (set(), ()),
  "plex": ({HET}, ("alpha", "gamma")),
  "hetsngp": ({SN, GP, HET}, ("precision_matrix", "/u")),
  "be_sngp": ({SN, GP, MF}, ("alpha", "gamma", "precision_matrix", "/u")),
  "url": ({HET, LOGDET}, ("uncertainty/scale", "uncertainty/running_mean")),
  "mimo": (set(), ()),
  "packed": (set(), ()),
  "rank1": (set(), ("alpha_mean", "alpha_rho", "gamma_mean", "gamma_rho")),
  "variational": (set(), ("kernel_mean", "kernel_rho")),
  "laplace": (set(), ("head/eigvecs_a", "head/eigvals_g", "head/prior_precision")),
  # (The returned network is the served sample stack; the SWAG state is float32 by construction.)
  "swag": (set(), ()),
}


def _dtypes(x):
  """The dtypes of the tensors in the nest `x` (other leaves ignored)."""
  leaves = keras.tree.flatten(x) if x is not None else []
  return {str(keras.backend.standardize_dtype(t.dtype)) for t in leaves if hasattr(t, "dtype")}


def _spy(monkeypatch, seen, key, cls, name, args=True):
  """Wraps `cls.name` to record the dtypes of its tensor arguments and results in `seen[key]`."""
  original = getattr(cls, name)

  @functools.wraps(original)
  def spied(self, *a, **kw):
    out = original(self, *a, **kw)
    seen.setdefault(key, set()).update(_dtypes((a, kw)) if args else (), _dtypes(out))
    return out

  monkeypatch.setattr(cls, name, spied)


def _train(workdir, params):
  gin.clear_config()
  config.parse([TINY], params)
  losses = []
  record = keras.callbacks.LambdaCallback(
    on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"]))
  )
  # Eager steps: 4 steps of a tiny network cost less than tracing the train, predict and
  # export functions of every run (the ops, and so the dtypes, are the same).
  tf.config.run_functions_eagerly(True)
  try:
    result = train_lib.train(str(workdir), "train_and_eval", callbacks=[record])
  finally:
    tf.config.run_functions_eagerly(False)
  return result, losses


def _images(n=8):
  from sklearn.datasets import load_digits

  x = load_digits().images[-n:]
  return np.round(x * 255.0 / 16.0).astype("float32")[..., None]


@pytest.fixture
def float32_after():
  yield
  keras.config.set_dtype_policy("float32")  # set_precision sets the global policy.


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_method_under_mixed_precision(name, tmp_path, monkeypatch, float32_after):
  assert set(CLASSES) == set(methods.METHODS)
  params = COMMON + EXTRA.get(name, []) + [f"train.method = @{CLASSES[name]}()"]
  runs = {
    policy: _train(tmp_path / policy, params + [f"set_precision.policy = '{policy}'"])
    for policy in POLICIES
  }
  reference, ref_losses = runs["float32"]
  for policy, (result, losses) in runs.items():
    assert result["step"] == 2, policy
    assert len(losses) == 2 and all(map(math.isfinite, losses)), (policy, losses)
    found = result["metrics"]
    for key in ("accuracy", "nll", "ece"):
      value = found[f"test/{key}"]
      assert math.isfinite(value), (policy, key)
      gap = abs(value - reference["metrics"][f"test/{key}"])
      assert gap <= TOLERANCE[key], (policy, key, value, gap)
    gap = abs(losses[0] - ref_losses[0])
    assert gap <= TOLERANCE["first_loss"], (policy, losses[0], ref_losses[0])
    print(
      f"PRECISION {name} {policy} first_loss={losses[0]:.5f} "
      + " ".join(f"{k}={found[f'test/{k}']:.5f}" for k in ("accuracy", "nll", "ece"))
    )

  spied_kinds, names = SENSITIVE[name]
  images = _images()
  for policy in MIXED:
    network = runs[policy][0]["network"]
    assert network.dtype_policy.name == policy
    # Every float variable float32 (weights, fast weights, BatchNorm and GP statistics, u).
    floats = [v for v in network.variables if "float" in str(v.dtype)]
    assert all(v.dtype == "float32" for v in floats), [
      (v.path, v.dtype) for v in floats if v.dtype != "float32"
    ]
    for ending in names:
      assert any(v.path.endswith(ending) for v in floats), (ending, [v.path for v in floats])
    # The sensitive computations, spied in one training and one inference pass.
    seen = {}
    with monkeypatch.context() as m:
      _spy(m, seen, SN, SpectralNormalization, "_normalized_kernel")  # u -> W / max(1, σ/c).
      _spy(m, seen, SN, SpectralNormalization, "_sigma")  # (W, u) -> σ.
      _spy(m, seen, GP, RandomFeatureGaussianProcess, "random_features", args=False)
      _spy(m, seen, GP, RandomFeatureGaussianProcess, "_update_precision")  # phi, logits.
      _spy(m, seen, GP, RandomFeatureGaussianProcess, "predictive_variance")  # phi -> var.
      _spy(m, seen, MF, MeanFieldLogits, "call")  # (logits, variance) -> adjusted logits.
      _spy(m, seen, HET, _MCHeteroscedasticBase, "_diag_scale", args=False)  # d(x).
      _spy(m, seen, HET, _MCHeteroscedasticBase, "_factor", args=False)  # V(x).
      _spy(m, seen, HET, _MCHeteroscedasticBase, "_output")  # Sampled logits -> log-mean.
      _spy(m, seen, LOGDET, HetXLDense, "covariance_log_det", args=False)
      for training in (True, False):
        outputs = network(images, training=training)
        # Every output float32 (the Keras convention for model outputs), in both modes.
        wrong = {k: _dtypes(v) for k, v in outputs.items() if _dtypes(v) != {"float32"}}
        assert not wrong, (policy, training, wrong)
    assert set(seen) == spied_kinds, (policy, seen)
    assert all(d <= {"float32", "int32", "int64"} and "float32" in d for d in seen.values()), (
      policy,
      seen,
    )
    for layer in network._flatten_layers():
      if isinstance(layer, RandomFeatureGaussianProcess):
        assert layer.solve_dtype == "float64"  # The Cholesky solve (float32 on TPUs).
        assert layer.precision_matrix.dtype == "float32"


def test_make_optimizer_wraps_for_float16_only(float32_after):
  for policy in POLICIES:
    keras.config.set_dtype_policy(policy)
    opt = optim.make_optimizer(8, lr_multipliers={"head": 2.0}, gradient_accumulation_steps=2)
    scaled = isinstance(opt, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16"), policy
    inner = optim.unwrap(opt)
    # The wrapped optimizer keeps layer-wise multipliers and accumulation.
    assert isinstance(inner, optim.ForwardStepCounter) and inner.lr_multipliers == (("head", 2.0),)
    assert inner.gradient_accumulation_steps == 2
    assert optim.peak_learning_rate(opt) == pytest.approx(1e-3)


def _loss_scaled(**kwargs):
  keras.config.set_dtype_policy("mixed_float16")
  opt = optim.make_optimizer(
    16, name="sgd", learning_rate=0.5, decay="constant", weight_decay=0.0, momentum=0.0, **kwargs
  )
  keras.config.set_dtype_policy("float32")
  return opt


def test_skipped_float16_steps_still_count_and_keep_the_cycle(float32_after):
  # A step whose scaled gradients overflow is skipped, halves the scale and still counts
  # (the step is the data position); with accumulation the skipped pass adds zero.
  for accumulation in (1, 2):
    opt = _loss_scaled(gradient_accumulation_steps=accumulation, loss_scale_initial=4.0)
    w = keras.Variable(np.ones(3, "float32"), name="w")
    opt.build([w])
    finite, inf = np.full(3, 8.0, "float32"), np.full(3, np.inf, "float32")  # 8 = 2 x scale 4.
    opt.apply([finite], [w])  # Unscaled gradient 2.
    opt.apply([inf], [w])
    assert int(opt.iterations.numpy()) == 2
    assert float(opt.dynamic_scale.numpy()) == 2.0  # Halved by the overflow.
    # No accumulation: one update, lr 0.5 x 2. Accumulation: (2 + 0) / 2 at the 2nd pass.
    expected = 1.0 - 0.5 * (2.0 if accumulation == 1 else 1.0)
    np.testing.assert_allclose(w.numpy(), expected)


def test_layerwise_multipliers_under_loss_scaling(float32_after):
  opt = _loss_scaled(lr_multipliers={"frozen": 0.0, "fast": 3.0}, loss_scale_initial=8.0)
  frozen = keras.Variable(np.ones(2, "float32"), name="frozen")
  fast = keras.Variable(np.ones(2, "float32"), name="fast")
  plain = keras.Variable(np.ones(2, "float32"), name="plain")
  opt.build([frozen, fast, plain])
  grad = np.full(2, 8.0 * 0.1, "float32")  # Scaled by 8: unscaled gradient 0.1.
  opt.apply([grad, grad, grad], [frozen, fast, plain])
  np.testing.assert_allclose(frozen.numpy(), 1.0)
  np.testing.assert_allclose(fast.numpy(), 1.0 - 3.0 * 0.5 * 0.1, rtol=1e-6)
  np.testing.assert_allclose(plain.numpy(), 1.0 - 0.5 * 0.1, rtol=1e-6)


def _ckpt(workdir, step):
  return os.path.join(workdir, "checkpoints", f"ckpt-{step:09d}")


def test_float16_resume_restores_the_loss_scale(tmp_path, float32_after, caplog):
  # A scale that doubles after every finite step until the tiny model's float16 gradients
  # overflow (measured: steps 1-3 apply, step 4 is skipped): a resume from step 2 that lost
  # the scale would apply step 4 and end with other weights.
  params = COMMON + [
    "set_precision.policy = 'mixed_float16'",
    "train.total_steps = 4",
    "train.evaluators = []",
    "make_optimizer.loss_scale_initial = 1e6",
    "make_optimizer.loss_scale_growth_steps = 1",
  ]
  result, losses = _train(tmp_path, params)
  assert result["step"] == 4 and all(map(math.isfinite, losses))
  uninterrupted = checkpoints.read(_ckpt(tmp_path, 4))[0]
  scale_key = sorted(k for k in uninterrupted if k.startswith("optimizer/"))[3]
  scale = float(uninterrupted[scale_key])  # LossScaleOptimizer's own state comes first.
  assert scale in (1e6 * 4, 1e6, 1e6 / 4), f"want 1 to 3 of 4 steps skipped, scale {scale}"
  assert float(checkpoints.read(_ckpt(tmp_path, 2))[0][scale_key]) == 4e6
  shutil.rmtree(_ckpt(tmp_path, 4))  # As if killed after step 2's checkpoint.
  result, _ = _train(tmp_path, params)
  assert result["step"] == 4
  resumed = checkpoints.read(_ckpt(tmp_path, 4))[0]
  assert resumed.keys() == uninterrupted.keys()
  for key in uninterrupted:  # Weights, optimizer slots and the loss scale: bit-identical.
    np.testing.assert_array_equal(resumed[key], uninterrupted[key], err_msg=key)
  # The float16 checkpoint resumed under float32: optimizer restored, loss scale dropped.
  result, _ = _train(tmp_path, COMMON + ["train.total_steps = 6", "train.evaluators = []"])
  assert result["step"] == 6
  assert "written with dynamic loss scaling" in caplog.text
  # And back to float16: the loss scale starts afresh.
  params = COMMON + ["set_precision.policy = 'mixed_float16'", "train.total_steps = 8"]
  result, _ = _train(tmp_path, params + ["train.evaluators = []"])
  assert result["step"] == 8
  assert "written without dynamic loss scaling" in caplog.text
