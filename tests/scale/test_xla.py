"""XLA on every path of every registered method, or an error saying why not.

`test_method_under_xla[<method>]` trains the method on the tiny config (2 steps,
`tests/scale/test_precision.py`'s per-method settings, a small MLP backbone but for the
deterministic method's ViT) with `train.jit_compile = True`, evaluates it and exports it. Spied at trace time: the train step and the predict step
(evaluation) were traced inside an XLA-compiled function, the predict step on one static
padded batch shape; the metrics are finite and the SavedModel loads and serves.
The other tests check that a `jit_compile` Keras would drop is refused with the reason,
and that the accelerator recipes turn XLA on.
"""

import glob
import math
import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config
from tensorflow.python.ops import control_flow_util

from keras_unc import config, methods
from keras_unc.evaluators import SavedModelNetwork
from keras_unc.evaluators.base import _LabelledPredict
from keras_unc.runtime import xla
from keras_unc.training import trainer as train_lib
from keras_unc.training.train_model import TrainModel
from tests.e2e.helpers import CLASSES, TINY
from tests.evaluators.helpers import digits
from tests.scale.test_precision import COMMON, EXTRA

EVAL_BATCH = 128  # The 297 digits test images: 2 full batches and one padded (41 + 87).
# XLA compiles on a CPU cost seconds per function: the methods run on test_precision's small
# MLP backbone (1/3 of the tiny ViT's compile time), the deterministic method on the tiny
# ViT, so that the ViT backbone (attention, layer norm, pooling) is XLA-compiled too.
VIT = "deterministic"
MLP = EXTRA["packed"]
XLA = [
  "train.jit_compile = True",
  "train.deterministic_ops = False",
  "train.export_at_end = True",
  f"train.eval_batch_size = {EVAL_BATCH}",
]


@pytest.fixture
def determinism_restored():
  """Op determinism (process-wide; tiny.gin's runs enable it) as before the test."""
  was = tf_config.is_op_determinism_enabled()
  yield
  (tf_config.enable_op_determinism if was else tf_config.disable_op_determinism)()


@pytest.fixture
def xla_allowed(determinism_restored):
  """Op determinism off for the test (Keras drops XLA under it), restored afterwards."""
  tf_config.disable_op_determinism()


def _in_xla():
  return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _spy(monkeypatch, cls, name, record):
  """Records `record(*args)` each time `cls.name` is traced (or run)."""
  original = getattr(cls, name)

  def spied(self, *args, **kwargs):
    record(*args)
    return original(self, *args, **kwargs)

  monkeypatch.setattr(cls, name, spied)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_method_under_xla(name, tmp_path, monkeypatch, determinism_restored):
  assert set(CLASSES) == set(methods.METHODS)
  traces = {"train": [], "predict": []}
  _spy(monkeypatch, TrainModel, "train_step", lambda data: traces["train"].append(_in_xla()))
  _spy(
    monkeypatch,
    _LabelledPredict,
    "predict_step",
    lambda data: traces["predict"].append((_in_xla(), tuple(data[0].shape))),
  )
  compiled = []
  check = keras.callbacks.LambdaCallback(
    on_train_end=lambda logs: compiled.append(check.model.jit_compile)
  )
  gin.clear_config()
  backbone = [] if name == VIT else MLP
  method = [f"train.method = @{CLASSES[name]}()"]
  config.parse([TINY], COMMON + backbone + EXTRA.get(name, []) + XLA + method)
  result = train_lib.train(str(tmp_path), "train_and_eval", callbacks=[check])

  assert result["step"] == 2 and compiled == [True]
  assert traces["train"] and all(traces["train"]), traces
  # Evaluation XLA-compiled, traced once per shape: the padded batch is static.
  assert traces["predict"] and all(in_xla for in_xla, _ in traces["predict"]), traces
  assert {shape[0] for _, shape in traces["predict"]} == {EVAL_BATCH}, traces
  found = result["metrics"]
  for key in ("accuracy", "nll", "ece"):
    assert math.isfinite(found[f"test/{key}"]), (key, found)

  served = SavedModelNetwork(result["export"])(digits("test")[0][:8])
  probs = served["probs"].numpy()
  assert probs.shape == (8, 10) and np.all(np.isfinite(probs))
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  assert np.all(np.isfinite(served["uncertainty"].numpy()))


def test_deterministic_ops_with_jit_compile_is_refused(tmp_path, determinism_restored):
  gin.clear_config()
  config.parse([TINY], ["train.jit_compile = True", "train.deterministic_ops = True"])
  with pytest.raises(ValueError, match=r"deterministic_ops = True.*disables XLA.*to False"):
    train_lib.train(str(tmp_path), "train")
  assert not (tmp_path / "checkpoints").exists()  # Refused before anything was built.


def test_left_over_determinism_is_switched_off_for_xla(determinism_restored, caplog):
  tf_config.enable_op_determinism()  # As an earlier deterministic run in this process.
  xla.set_op_determinism(deterministic_ops=False, jit_compile=True)
  assert not tf_config.is_op_determinism_enabled()
  assert "switches it off" in caplog.text
  tf_config.enable_op_determinism()
  xla.set_op_determinism(deterministic_ops=False, jit_compile=False)  # Not ours to change.
  assert tf_config.is_op_determinism_enabled()


class _NoJit(keras.layers.Layer):
  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.supports_jit = False

  def call(self, x):
    return x


def _model(layer):
  inputs = keras.Input((3,))
  return keras.Model(inputs, layer(inputs), name="probe")


def test_dropped_jit_compile_is_refused_with_its_reason(determinism_restored):
  tf_config.disable_op_determinism()
  model = _model(_NoJit())
  model.compile(jit_compile=True)  # Keras prints a line and compiles without XLA.
  with pytest.raises(ValueError, match=r"train.jit_compile = True, but probe .*_NoJit"):
    xla.check_jit_compile(model, True, "train.jit_compile")
  xla.check_jit_compile(model, False)  # Asked off, is off.
  tf_config.enable_op_determinism()
  model = _model(keras.layers.Dense(2))
  model.compile(jit_compile=True)
  with pytest.raises(ValueError, match="op determinism is on"):
    xla.check_jit_compile(model, True)
  tf_config.disable_op_determinism()
  model.compile(jit_compile=True)
  xla.check_jit_compile(model, True)  # XLA kept: no error.
  tf.config.run_functions_eagerly(True)
  try:
    with pytest.raises(ValueError, match="run_functions_eagerly"):
      xla.check_jit_compile(model, True)
  finally:
    tf.config.run_functions_eagerly(False)


RECIPES = sorted(
  os.path.relpath(p, config.GIN_DIR)
  for p in glob.glob(os.path.join(config.GIN_DIR, "experiments", "**", "*.gin"), recursive=True)
  if not p.endswith("imagenet_c.gin")  # An evaluation add-on to a recipe, not a recipe.
)


def test_accelerator_recipes_turn_xla_on():
  assert len(RECIPES) > 40
  for path in RECIPES:
    gin.clear_config()
    config.parse([path], [], finalize=False)
    # Every recipe, the URL losses that sample a vMF included (its XLA-able Gamma draw).
    assert config.value("train.jit_compile"), path
    assert not config.value("train.deterministic_ops"), path  # (It would refuse XLA.)
  gin.clear_config()
