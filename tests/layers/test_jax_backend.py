"""The layers, the method heads and the backbones under Keras' JAX backend, and without
TensorFlow.

Keras picks its backend once, at import, so the JAX checks run in a child process with
`KERAS_BACKEND=jax`: `test_layer_tests_pass_in_a_jax_process` runs the shared-harness cases of the
layer test files listed in `JAX_LAYER_TESTS` (one case or two per layer class: under JAX
every eager op compiles on first use, which makes the full list take minutes on two cores)
and this file's `jax_only` tests, which put every method head and every backbone through
`run_model_test`. In the TensorFlow run of the suite those are skipped; in the child, the
two driver tests are. `test_imports_without_tensorflow` imports the package, the layers,
the heads and the backbones, and runs a ViT with an SNGP head, in a process where
`import tensorflow` fails, as on a JAX user's machine or a GPU machine with JAX alone.
"""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.layers.helpers import BLOCK_TENSORFLOW, run_model_test

ON_JAX = keras.backend.backend() == "jax"
ROOT = pathlib.Path(__file__).resolve().parents[2]
THIS = pathlib.Path(__file__).resolve().relative_to(ROOT).as_posix()

jax_only = pytest.mark.skipif(
  not ON_JAX, reason="runs in the KERAS_BACKEND=jax child of test_layer_tests_pass_in_a_jax_process"
)
driver = pytest.mark.skipif(ON_JAX, reason="starts the JAX child process itself")

# What the JAX child runs in CI (budget: about a minute of one core): the heads, the ViT and
# the MLP of this file, and the harness cases of the layers that no head or backbone holds
# (the head cases cover the BatchEnsemble dense and tiling, shallow-ensemble, MC-dropout,
# GP, mean-field, heteroscedastic softmax and HET-XL layers and MemberAxis; the ViT its
# own layers; the sigmoid heteroscedastic head shares the softmax one's noise code). Every
# JAX op compiles on first use, so a case costs seconds: the full list (every harness case
# of tests/layers and every backbone) runs with KERAS_UNC_JAX_TESTS=all.
JAX_CI_TESTS = [
  # Under JAX "no gradient reaches" is an all-zero gradient: this checks that form.
  "tests/layers/test_harness.py::test_broken_layer_fails_the_named_check[StopGradient]",
  "tests/layers/test_batch_ensemble.py::test_layer_harness[conv2d]",
  "tests/layers/test_batch_ensemble.py::test_batchnorm_harness[vectors]",
  "tests/layers/test_bayesian.py::test_layer_harness[dense_rank1]",
  "tests/layers/test_bayesian.py::test_layer_harness[dense_flipout]",
  "tests/layers/test_laplace.py::test_layer_harness[diag-mc]",
  "tests/layers/test_mimo.py::test_mimo_logits_harness",
  "tests/layers/test_outputs.py::test_layer_harness[predictive_softmax]",
  "tests/layers/test_outputs.py::test_layer_harness[uncertainty_entropy]",
  "tests/layers/test_packed.py::test_layer_harness[dense]",
  "tests/layers/test_spectral_norm.py::test_layer_harness[dense]",
  "tests/layers/test_std_conv.py::test_layer_harness[StdConv2D]",
  f"{THIS}::test_head_on_jax",
  f"{THIS}::test_backbone_on_jax[vit]",
  f"{THIS}::test_backbone_on_jax[mlp]",
  f"{THIS}::test_gp_solve_dtype_on_jax",
]
# KERAS_UNC_JAX_TESTS=all: every harness case of tests/layers (less one that only TensorFlow
# can fail: under JAX a float32 op on a bfloat16 operand promotes instead of raising) and
# every JAX-only test of this file.
JAX_ALL_TESTS = [
  "tests/layers",
  "-k",
  "(harness or _on_jax) and not Float32TimesAutocast",
]


# XLA's CPU compiler without its expensive optimisations: the cases are tiny and compile far
# more than they run (a third less CPU time); the computed values are the same ops'.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _child_env():
  flags = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
  return {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}


@driver
def test_layer_tests_pass_in_a_jax_process(tmp_path):
  full = os.environ.get("KERAS_UNC_JAX_TESTS") == "all"
  command = [
    sys.executable,
    "-m",
    "pytest",
    "-q",
    "-p",
    "no:xdist",
    "--noconftest",  # tests/conftest.py sets up TensorFlow devices; the layer tests need none.
    f"--basetemp={tmp_path / 'child'}",
    *(JAX_ALL_TESTS if full else JAX_CI_TESTS),
  ]
  env = {key: value for key, value in _child_env().items() if key != "PYTEST_ADDOPTS"}
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
  summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
  assert result.returncode == 0, f"JAX layer tests failed:\n{result.stdout[-8000:]}"
  assert "failed" not in summary and "skipped" not in summary, summary
  # Each explicit id is one test, but the head test is all of HEAD_CASES.
  expected = len(JAX_CI_TESTS) - 1 + len(HEAD_CASES)
  passed = int(summary.split(" passed")[0].split()[-1])
  assert passed >= expected if full else passed == expected, f"expected {expected}: {summary}"


# A ViT of one block on 8 x 8 images (two 4 x 4 patches a side).
TINY_VIT = dict(image_size=8, width=16, depth=1, mlp_dim=32, num_heads=2)

NO_TENSORFLOW = (
  BLOCK_TENSORFLOW
  + f"TINY_VIT = {TINY_VIT!r}\n"
  + """
import json, pkgutil, sys

import keras_unc, keras_unc.backbones, keras_unc.layers
from keras_unc.methods import heads
modules = []
for package in (keras_unc.layers, keras_unc.backbones):
  for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
    __import__(info.name)
    modules.append(info.name)

import keras
import numpy as np
images = keras.Input((8, 8, 3))
embedding = keras_unc.backbones.vit("Ti/4", **TINY_VIT)(images)
logits, extras = heads.GaussianProcess(num_inducing=8)(embedding, 3, 1)
model = keras.Model(images, {"logits": logits, **extras})
out = model.predict(np.ones((2, 8, 8, 3), "float32"), verbose=0)
print(json.dumps({
  "backend": keras.backend.backend(),
  "tensorflow_loaded": any(m.partition(".")[0] == "tensorflow" for m in sys.modules),
  "modules": modules,
  "logits_shape": list(out["logits"].shape),
  "variance_finite": bool(np.isfinite(out["gp_variance"]).all()),
}))
"""
)


@driver
def test_imports_without_tensorflow():
  result = subprocess.run(
    [sys.executable, "-c", NO_TENSORFLOW],
    cwd=ROOT,
    env=_child_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, f"import without TensorFlow failed:\n{result.stderr[-6000:]}"
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["backend"] == "jax"
  assert not report["tensorflow_loaded"]
  expected = {
    f"keras_unc.{package}.{path.stem}"
    for package in ("layers", "backbones")
    for path in (ROOT / "keras_unc" / package).glob("*.py")
    if path.stem != "__init__"
  }
  assert expected <= set(report["modules"]), sorted(expected - set(report["modules"]))
  assert report["logits_shape"] == [2, 1, 3] and report["variance_finite"]


@driver
def test_blocked_import_really_fails():
  """The import hook of `test_imports_without_tensorflow` does refuse TensorFlow."""
  code = BLOCK_TENSORFLOW + "import tensorflow\n"
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, env=_child_env(), capture_output=True, text=True
  )
  assert result.returncode != 0 and "without TensorFlow" in result.stderr


# Heads on a `keras.Input` embedding of width D; C classes; B rows (M·B for M members).
B, D, C = 4, 6, 5


def _head_cases():
  from keras_unc.methods import heads

  def het(**kwargs):
    return heads.Heteroscedastic(num_factors=2, train_mc_samples=3, test_mc_samples=4, **kwargs)

  # id, head, members, deterministic, output shapes (keys in sorted order).
  return [
    ("linear", lambda: heads.Linear(kernel_initializer="glorot_uniform"), 1, True, None),
    ("linear_bn", lambda: heads.Linear("glorot_uniform", batchnorm=True), 1, True, None),
    ("batch_ensemble", lambda: heads.BatchEnsembleLinear(), 2, True, [(B // 2, 2, C)]),
    ("shallow_ensemble", lambda: heads.ShallowEnsemble(num_heads=3), 1, True, [(B, 3, C)]),
    ("mc_dropout", lambda: heads.MCDropoutHead(rate=0.3, num_samples=3), 1, False, [(B, 3, C)]),
    ("sngp", lambda: heads.GaussianProcess(num_inducing=8), 1, True, [(B,), (B, 1, C)]),
    ("heteroscedastic", het, 1, False, [(B, 1, C)]),
    ("hetxl", lambda: het(xl=True), 1, False, [(B, 1, C)]),
    (
      "hetsngp",
      lambda: heads.HetGP(heads.GaussianProcess(num_inducing=8), het()),
      1,
      False,
      [(B, 1, C)],
    ),
  ]


HEAD_CASES = [pytest.param(*case, id=case[0]) for case in _head_cases()]


@jax_only
@pytest.mark.parametrize("name, make_head, members, deterministic, shapes", HEAD_CASES)
def test_head_on_jax(name, make_head, members, deterministic, shapes, tmp_path):
  def build():
    embedding = keras.Input((D,), name="embedding")
    logits, extras = make_head()(embedding, C, members)
    return keras.Model(embedding, {"logits": logits, **extras}, name="head_model")

  x = np.random.default_rng(0).normal(size=(B, D)).astype("float32")
  run_model_test(
    build,
    x,
    tmp_path=tmp_path,
    name=f"{name} head",
    expected_output_shape=shapes or [(B, members, C)],
    deterministic=deterministic,
    mixed_precision_output_dtype="float32",  # Heads compute their logits in float32.
    atol=1e-5,
  )


def _backbone_cases():
  from keras_unc import backbones

  return [
    (
      "vit",
      lambda: backbones.vit("Ti/4", **TINY_VIT),
      (2, 8, 8, 3),
      (2, 16),
    ),
    (
      "vit_map_members",
      lambda: backbones.vit("Ti/4", **TINY_VIT, pooling="map", tile_members=2),
      (2, 8, 8, 3),
      (4, 16),
    ),
    (
      "resnet",
      lambda: backbones.resnet(18, width=0.125, image_size=16, stem="cifar"),
      (2, 16, 16, 3),
      (2, 64),
    ),
    (
      "wide_resnet",
      lambda: backbones.wide_resnet(10, 1, image_size=16),
      (2, 16, 16, 3),
      (2, 64),
    ),
    (
      "bit",
      lambda: backbones.bit_resnet((1, 1, 1, 1), width=0.125, groups=4, image_size=32),
      (2, 32, 32, 3),
      (2, 256),
    ),
    ("mlp", lambda: backbones.mlp(16, 2, input_dim=6), (2, 6), (2, 16)),
  ]


BACKBONE_CASES = [pytest.param(*case, id=case[0]) for case in _backbone_cases()]


@jax_only
@pytest.mark.parametrize("name, build, input_shape, output_shape", BACKBONE_CASES)
def test_backbone_on_jax(name, build, input_shape, output_shape, tmp_path):
  x = np.random.default_rng(1).normal(size=input_shape).astype("float32")
  run_model_test(
    build, x, tmp_path=tmp_path, name=name, expected_output_shape=output_shape, atol=1e-4
  )


@jax_only
def test_gp_solve_dtype_on_jax():
  # No host factorisation under JAX: the default resolves to a float32 device solve, and an
  # explicit float64 request (which would not be honoured) is refused with the fix.
  from keras_unc.layers.gaussian_process import RandomFeatureGaussianProcess

  assert RandomFeatureGaussianProcess(3).solve_dtype == "float32"
  with pytest.raises(ValueError, match="needs the TensorFlow backend.*solve_dtype='float32'"):
    RandomFeatureGaussianProcess(3, solve_dtype="float64")
