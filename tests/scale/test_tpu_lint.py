"""TPU lint: every path of every registered method compiles with XLA and puts on the device
no float64 op (TPUs have none), no host call-back and no string op.

For each method (the tiny config of `tests/scale/test_precision.py`, one training step run
eagerly to build the train model and its optimizer as the trainer does), three functions are
lowered to HLO with `jit_compile=True`: the train step (`TrainModel.train_step`, optimizer
update, NaN checks, weight averaging), the inference call `network(x, training=False)` and
the serving function of the SavedModel (`export.serving_function`, traced inside
`serve_from_cache` as the export does). The HLO must hold no `f64[` shape, no custom call
to a host call-back and no host transfer; the TensorFlow graph no `PyFunc`/`EagerPyFunc` and
no string-formatting op. The GP methods are also exported and their SavedModel graph is
checked float32 end to end (no `DT_DOUBLE` anywhere).
"""

import re

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_unc import config, posthoc
from keras_unc.layers import gaussian_process
from keras_unc.training import export
from keras_unc.training import trainer as train_lib
from tests.e2e.helpers import CLASSES, TINY
from tests.scale.test_precision import COMMON, EXTRA, float32_after  # noqa: F401 (fixture)

# Op types that run Python on the host or format strings: none may reach a device graph.
HOST_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc", "PrintV2", "Print", "StringFormat"}
HOST_OPS |= {"AsString", "StringJoin", "ReduceJoin", "StringToNumber"}
# In HLO: custom calls into Python / host call-backs, and host transfers (outside compilation).
HLO_HOST = re.compile(
  r"custom_call_target=\"[^\"]*(callback|py_func|Host)[^\"]*\"|is_host_transfer=true"
)
GP_METHODS = ("sngp", "hetsngp", "be_sngp")
# Variants that add state updated inside the train step (weight averaging) to a method.
# and TPUs' precision policy to the methods with the most float32-pinned state, and URL's
# sampling losses.
BF16 = ["set_precision.policy = 'mixed_bfloat16'"]
VARIANTS = {
  "deterministic+swa": ("deterministic", ["weight_averaging.kind = 'swa'"]),
  "sngp@mixed_bfloat16": ("sngp", BF16),
  "hetsngp@mixed_bfloat16": ("hetsngp", BF16),
  "url@mixed_bfloat16": ("url", BF16),
  # URL's losses that sample a vMF (Wood's sampler, its Beta proposal from Gamma draws).
  "url+nivmf": (
    "url",
    ["URL.loss = 'nivmf'", "URL.head = None", "URL.module = 'pred_net'", "URL.mc_samples = 4"],
  ),
  "url+hib": (
    "url",
    ["URL.loss = 'hib'", "URL.head = None", "URL.module = 'pred_net'", "URL.mc_samples = 4"],
  ),
}


class _Capture(keras.callbacks.Callback):
  """Keeps the `TrainModel` that `fit` ran (compiled, optimizer built)."""

  def on_train_end(self, logs=None):
    self.trained = self.model


def _graph_ops(concrete):
  """(op types, dtypes of every `T`/`dtype`-like attribute) of a concrete function's graph,
  its function library included."""
  graph_def = concrete.graph.as_graph_def()
  nodes = list(graph_def.node)
  for function in graph_def.library.function:
    nodes.extend(function.node_def)
  types, dtypes = set(), set()
  for node in nodes:
    types.add(node.op)
    for value in node.attr.values():
      if value.type:
        dtypes.add(tf.dtypes.as_dtype(value.type).name)
      dtypes.update(tf.dtypes.as_dtype(t).name for t in value.list.type)
  return types, dtypes


def _lint(name, fn, *args):
  """Lowers `fn` with XLA and returns what is wrong with its HLO and graph ([] = clean)."""
  compiled = tf.function(fn, jit_compile=True)
  hlo = compiled.experimental_get_compiler_ir(*args)(stage="hlo")
  problems = [
    f"{name}: f64 in HLO: {line.strip()[:160]}" for line in hlo.splitlines() if "f64[" in line
  ][:3]
  problems += [f"{name}: host call-back in HLO: {m.group(0)}" for m in HLO_HOST.finditer(hlo)]
  types, dtypes = _graph_ops(compiled.get_concrete_function(*args))
  problems += [f"{name}: host/string op {op}" for op in sorted(types & HOST_OPS)]
  if "float64" in dtypes:
    problems.append(f"{name}: float64 tensors in the traced graph")
  return problems


def _train_one_step(workdir, params):
  gin.clear_config()
  config.parse([TINY], params)
  capture = _Capture()
  tf.config.run_functions_eagerly(True)  # One eager step builds everything the trainer builds.
  try:
    result = train_lib.train(str(workdir), "train", callbacks=[capture])
  finally:
    tf.config.run_functions_eagerly(False)
  return capture.trained, result["network"]


def _batch(model):
  from sklearn.datasets import load_digits

  x = np.round(load_digits().images[:32] * 255.0 / 16.0).astype("float32")[..., None]
  return tf.constant(x), tf.constant(load_digits().target[:32].astype("int64"))


CASES = {name: (name, []) for name in sorted(CLASSES)} | VARIANTS


@pytest.mark.usefixtures("float32_after")  # set_precision sets the global policy.
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_path_is_tpu_safe(case, tmp_path):
  name, extra = CASES[case]
  params = (
    COMMON
    + EXTRA.get(name, [])
    + extra
    + [
      f"train.method = @{CLASSES[name]}()",
      "train.total_steps = 1",
      "train.eval_every = 1",
      "train.checkpoint_every = 1",
      "train.evaluators = []",
    ]
  )
  model, network = _train_one_step(tmp_path / "run", params)
  images, labels = _batch(model)
  problems = _lint("train step", lambda x, y: model.train_step((x, y)), images, labels)
  problems += _lint("inference", lambda x: network(x, training=False), images)
  raw = tf.cast(images, tf.uint8)
  with gaussian_process.serve_from_cache(network):
    problems += _lint("serving", export.serving_function(network), raw)
  assert not problems, "\n".join(problems)
  if name in GP_METHODS:  # The SavedModel itself: float32 end to end, no solve.
    path = export.export_saved_model(network, str(tmp_path / "export"), (8, 8, 1))
    served = tf.saved_model.load(path).signatures["serving_default"]
    types, dtypes = _graph_ops(served)
    assert "float64" not in dtypes and not types & (HOST_OPS | {"Cholesky"}), (dtypes, types)
    out = served(images=raw)
    assert all(v.dtype in (tf.float32, tf.int32, tf.int64, tf.bool) for v in out.values()), out


def test_the_lint_sees_float64_and_host_callbacks():
  x = tf.ones([2, 3])
  problems = _lint("f", lambda x: tf.cast(tf.reduce_sum(tf.cast(x, tf.float64)), tf.float32), x)
  assert any("f64 in HLO" in p for p in problems) and any("float64 tensors" in p for p in problems)
  assert _lint("g", lambda x: 2.0 * x, x) == []
  with pytest.raises(Exception, match="(?i)PyFunc|EagerPyFunc|compil"):  # Not even compilable.
    _lint("h", lambda x: tf.py_function(lambda v: v, [x], tf.float32), x)


POSTHOC = [(kind, name) for kind in posthoc.KINDS for name in posthoc.names(kind)]


@pytest.mark.parametrize("kind,name", POSTHOC, ids=[f"{k}-{n}" for k, n in POSTHOC])
def test_every_posthoc_component_serves_tpu_safe(kind, name):
  # What the export appends to `serving_default`: each fitted component's Keras layer.
  from tests.posthoc.test_detectors import CAL, DATA, TEST

  labels = np.random.default_rng(0).integers(0, CAL["probs"].shape[1], len(CAL["probs"]))
  data = DATA if kind == "detector" else posthoc.FitData(CAL, labels)
  layer = posthoc.get(kind, name)().fit(data).layer()
  outputs = {k: tf.constant(v) for k, v in TEST.items()}
  assert not _lint(f"{kind} {name}", lambda o: layer(o), outputs)
