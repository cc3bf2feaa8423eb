"""Shared helpers of the layer tests: `run_layer_test`, the one harness every layer goes through.

Modelled on Keras' own `testing.TestCase.run_layer_test`, adapted to keras_unc's layers:
structured inputs (`(logits, variance)`), keyword tensor inputs (`loc=`), layers that sample at
inference (MC dropout, heteroscedastic heads) and wrappers whose init kwargs hold a layer.
"""

import contextlib
import copy
import dataclasses
import math
import numbers

import keras
import numpy as np

_MIXED = "mixed_bfloat16"

# Python source that makes `import tensorflow` (and tensorflow_datasets) fail in the process
# that runs it first: a stand-in for a machine with JAX and no TensorFlow (`python -c`).
BLOCK_TENSORFLOW = """
import importlib.abc, sys

class _NoTensorFlow(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.partition(".")[0] in ("tensorflow", "tensorflow_datasets"):
      raise ImportError(f"{name}: this process stands for a machine without TensorFlow")
    return None

sys.meta_path.insert(0, _NoTensorFlow())
"""


@dataclasses.dataclass
class LayerTestReport:
  """What `run_layer_test` built and saw, for extra per-layer assertions.

  Attributes:
    layer: the float32 layer of the `.keras` round trip (built, after one training call).
    loaded_layer: the same layer reloaded from `tmp_path / "m.keras"`.
    outputs: flattened float32 NumPy outputs of the first inference call of `layer`.
    mixed_output_dtypes: dtypes of the flattened outputs under `dtype="mixed_bfloat16"`
      (None when the check was skipped).
  """

  layer: keras.layers.Layer
  loaded_layer: keras.layers.Layer
  outputs: list
  mixed_output_dtypes: tuple | None = None


def run_layer_test(
  layer_cls,
  init_kwargs,
  input_data,
  *,
  tmp_path,
  expected_output_shape=None,
  expected_num_trainable_weights=None,
  expected_num_non_trainable_weights=None,
  expected_num_seed_generators=None,
  call_kwargs=None,
  deterministic=True,
  run_mixed_precision_check=True,
  mixed_precision_output_dtype=None,
  run_training_check=True,
  atol=1e-6,
):
  """Runs the shared checks of a keras_unc layer; raises AssertionError naming the failed one.

  Checks, in order:
    1. build: the first inference call gives `expected_output_shape` and the expected
       trainable / non-trainable weight and seed-generator counts; a second call with the
       same input agrees with the first iff `deterministic`.
    2. config: every key of `init_kwargs` is in `get_config()` (with the same value for
       plain numbers, strings and their tuples); `layer_cls.from_config(config)` gives the
       same config and, after copying the weights and seed-generator states, the same outputs.
    3. `.keras`: after one `training=True` call (so state such as a GP precision matrix or a
       power-iteration vector moved), a one-layer functional model is saved to
       `tmp_path / "m.keras"` and reloaded with `keras.saving.load_model`: its symbolic
       output shapes and dtypes match the eager ones, the reloaded layer has the same config
       and every weight comes back equal, and `predict` of
       the reloaded model equals the original's eager outputs (`atol`). `.keras` files do not
       hold `keras.random.SeedGenerator` states (Keras behaviour), so for layers that sample
       the states are copied over first: the comparison runs with a fixed seed state.
    4. mixed precision: a fresh layer with `dtype=keras.DTypePolicy("mixed_bfloat16")` (also
       given to layers nested in `init_kwargs`) has float32 variables and finite outputs;
       the output dtypes (float32 or bfloat16, see `mixed_precision_output_dtype`) are
       reported in the returned `LayerTestReport`.
    5. training: on a fresh float32 layer, the loss `Σ mean(float32(output))` of one
       `training=True` call has a finite gradient for every trainable weight, and one
       `keras.optimizers.SGD(0.1)` step changes at least one of them. Skipped for layers
       without trainable weights. The gradient is the backend's own: `tf.GradientTape`
       under TensorFlow, `jax.grad` of the call inside a `keras.StatelessScope` under JAX.
       JAX has no None gradient: there "no gradient reaches" means every trainable weight's
       gradient is exactly zero (TensorFlow's run of the same test checks each weight).

  The harness runs under Keras' TensorFlow and JAX backends (`KERAS_BACKEND`) and imports
  neither itself: `tests/layers/test_jax_backend.py` runs the layer tests under JAX.

  Args:
    layer_cls: the layer class.
    init_kwargs: keyword arguments of `layer_cls`. Layers among the values (wrappers) are
      cloned from their config for every instance the harness builds.
    input_data: a NumPy array (first call argument), a tuple / list of arrays (one
      structured first argument, e.g. `(logits, variance)`) or a dict of arrays (passed as
      keyword arguments, e.g. `{"inputs": x, "loc": loc}`). Axis 0 is the batch.
    tmp_path: pytest's `tmp_path`, where `m.keras` is written.
    expected_output_shape: the output shape, or a tuple of shapes for several outputs.
    expected_num_trainable_weights: `len(layer.trainable_weights)` after build.
    expected_num_non_trainable_weights: `len(layer.non_trainable_weights)` after build.
    expected_num_seed_generators: seed generators of the layer and its sub-layers.
    call_kwargs: extra non-tensor keyword arguments of every call (never `training`).
    deterministic: False for layers that sample at inference (two calls must then differ).
    run_mixed_precision_check: run check 4.
    mixed_precision_output_dtype: if given, the dtype every output must have under
      `mixed_bfloat16` ("float32" for layers that deliberately compute in float32).
    run_training_check: run check 5.
    atol: tolerance of the output comparisons.

  Returns:
    A `LayerTestReport`.
  """
  name = layer_cls.__name__
  call_kwargs = dict(call_kwargs or {})
  if "training" in call_kwargs:
    raise ValueError("run_layer_test sets `training` itself; do not pass it in call_kwargs.")

  with _phase(name, "build"):
    layer, outputs = _check_build(
      name,
      layer_cls,
      init_kwargs,
      input_data,
      call_kwargs,
      expected_output_shape,
      expected_num_trainable_weights,
      expected_num_non_trainable_weights,
      expected_num_seed_generators,
      deterministic,
    )
  with _phase(name, "config round-trip"):
    _check_config_round_trip(name, layer_cls, layer, init_kwargs, input_data, call_kwargs, atol)
  with _phase(name, ".keras round-trip"):
    loaded_layer = _check_keras_round_trip(name, layer, input_data, call_kwargs, tmp_path, atol)
  report = LayerTestReport(layer=layer, loaded_layer=loaded_layer, outputs=outputs)
  if run_mixed_precision_check:
    with _phase(name, "mixed precision"):
      report.mixed_output_dtypes = _check_mixed_precision(
        name, layer_cls, init_kwargs, input_data, call_kwargs, mixed_precision_output_dtype
      )
  if run_training_check:
    with _phase(name, "gradient"):
      _check_training_step(name, layer_cls, init_kwargs, input_data, call_kwargs)
  return report


def run_model_test(build, input_data, *, tmp_path, name=None, **checks):
  """`run_layer_test` for a functional model that `build()` returns (a backbone, or a head
  on a `keras.Input` embedding): the same five checks, with the model as the layer.

  The config round trip rebuilds it with `keras.Model.from_config`; the mixed-precision
  check calls `build()` again with `mixed_bfloat16` as Keras' global dtype policy (restored
  afterwards), which is how a backbone or head is built for mixed precision.

  Args:
    build: a function of no arguments returning a fresh functional `keras.Model`.
    input_data: as in `run_layer_test`.
    tmp_path: pytest's `tmp_path`.
    name: the name in failure messages (default: `build.__name__`).
    **checks: the other keyword arguments of `run_layer_test` (expected counts, shapes,
      `deterministic`, `atol`, which checks to run).

  Returns:
    A `LayerTestReport` whose `layer` and `loaded_layer` are models.
  """
  return run_layer_test(_ModelBuilder(build, name), {}, input_data, tmp_path=tmp_path, **checks)


class _ModelBuilder:
  """`build` in the place of a layer class: called with an optional `dtype` (the global
  dtype policy while it builds); `from_config` is the functional model's.
  """

  def __init__(self, build, name=None):
    self.build = build
    self.__name__ = name or getattr(build, "__name__", "model")

  def __call__(self, dtype=None):
    if dtype is None:
      return self.build()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
      return self.build()
    finally:
      keras.config.set_dtype_policy(previous)

  @staticmethod
  def from_config(config):
    return keras.Model.from_config(config)


@contextlib.contextmanager
def _phase(name, check):
  """Re-raises an error of the layer inside a check as an AssertionError naming the check."""
  try:
    yield
  except AssertionError:
    raise
  except Exception as error:
    raise AssertionError(
      f"{name}: {check} check failed with {type(error).__name__}: {error}"
    ) from error


def _check_build(
  name,
  layer_cls,
  init_kwargs,
  input_data,
  call_kwargs,
  expected_output_shape,
  expected_num_trainable_weights,
  expected_num_non_trainable_weights,
  expected_num_seed_generators,
  deterministic,
):
  layer = _instantiate(layer_cls, init_kwargs)
  outputs = _numpy_outputs(_call(layer, input_data, call_kwargs))
  if expected_output_shape is not None:
    expected = _shape_list(expected_output_shape, len(outputs))
    got = [tuple(o.shape) for o in outputs]
    assert got == expected, f"{name}: output shape check failed: got {got}, expected {expected}."
  _check_count(name, "trainable weights", layer.trainable_weights, expected_num_trainable_weights)
  _check_count(
    name, "non-trainable weights", layer.non_trainable_weights, expected_num_non_trainable_weights
  )
  _check_count(name, "seed generators", _seed_generators(layer), expected_num_seed_generators)
  second = _numpy_outputs(_call(layer, input_data, call_kwargs))
  same = _all_equal(outputs, second)
  if deterministic:
    assert same, (
      f"{name}: determinism check failed: two inference calls with the same input differ; "
      "pass deterministic=False for a layer that samples at inference."
    )
  else:
    assert not same, (
      f"{name}: randomness check failed: declared deterministic=False but two inference "
      "calls gave identical outputs."
    )
  return layer, outputs


def _instantiate(layer_cls, init_kwargs, dtype=None):
  """`layer_cls(**init_kwargs)`, with nested layers cloned (and given `dtype` if set)."""

  def clone(value):
    if isinstance(value, keras.layers.Layer):
      config = value.get_config()
      if dtype is not None:
        config = {**config, "dtype": dtype}
      return type(value).from_config(config)
    return value

  kwargs = {key: clone(value) for key, value in init_kwargs.items()}
  if dtype is not None:
    kwargs["dtype"] = dtype
  return layer_cls(**kwargs)


def _call(layer, data, call_kwargs, **extra):
  if isinstance(data, dict):
    return layer(**data, **call_kwargs, **extra)
  return layer(data, **call_kwargs, **extra)


def _np(x):
  """A tensor or variable as a NumPy array (`.numpy()` avoids NumPy 2's `__array__` warning)."""
  if isinstance(x, keras.Variable):
    x = x.value
  return np.array(x.numpy()) if hasattr(x, "numpy") else np.array(x)


def _numpy_outputs(outputs):
  return [_np(keras.ops.cast(o, "float32")) for o in _flat(outputs)]


def _flat(outputs):
  return keras.tree.flatten(outputs)


def _dtype(x):
  return keras.backend.standardize_dtype(x.dtype)


def _shape_list(expected, num_outputs):
  if num_outputs == 1 and all(isinstance(d, (int, type(None))) for d in expected):
    return [tuple(expected)]
  return [tuple(shape) for shape in expected]


def _all_equal(a, b):
  return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _check_count(name, what, items, expected):
  if expected is None:
    return
  paths = [getattr(item, "path", type(item).__name__) for item in items]
  assert len(items) == expected, (
    f"{name}: weight-count check failed: {len(items)} {what} {paths}, expected {expected}."
  )


def _seed_generators(layer):
  """The `keras.random.SeedGenerator`s of `layer` and its sub-layers, in creation order."""
  found, seen = [], set()
  for sub in layer._flatten_layers(include_self=True, recursive=True):
    for generator in sub._seed_generators:
      if id(generator) not in seen:
        seen.add(id(generator))
        found.append(generator)
  return found


def _copy_state(source, target):
  """Assigns the weights and seed-generator states of `source` to `target` (same structure)."""
  # Through NumPy: a copy, not the same buffer. Under JAX `assign(src)` would share the array,
  # and a jitted `predict` of the target (which donates its state) would delete the source's.
  for src, dst in zip(source.weights, target.weights):
    dst.assign(_np(src))
  for src, dst in zip(_seed_generators(source), _seed_generators(target)):
    dst.state.assign(_np(src.state))


def _assert_close(name, check, got, expected, atol):
  assert len(got) == len(expected), (
    f"{name}: {check} check failed: {len(got)} outputs, expected {len(expected)}."
  )
  for i, (g, e) in enumerate(zip(got, expected)):
    assert g.shape == e.shape, (
      f"{name}: {check} check failed: output {i} has shape {g.shape}, expected {e.shape}."
    )
    diff = float(np.max(np.abs(g - e))) if g.size else 0.0
    assert np.allclose(g, e, atol=atol, rtol=0.0), (
      f"{name}: {check} check failed: output {i} differs by up to {diff:.3g} (atol {atol})."
    )


def _json_like(value):
  """`value` with tuples as lists, as a `.keras` file's JSON stores them."""
  if isinstance(value, dict):
    return {key: _json_like(item) for key, item in value.items()}
  if isinstance(value, (tuple, list)):
    return [_json_like(item) for item in value]
  return value


def _same_value(given, stored):
  """Whether a plain init value survives in the config; other types are not compared."""
  if isinstance(given, (tuple, list)) and isinstance(stored, (tuple, list)):
    return len(given) == len(stored) and all(_same_value(a, b) for a, b in zip(given, stored))
  plain = (numbers.Number, str, type(None))
  if isinstance(given, plain) and isinstance(stored, plain):
    if isinstance(given, numbers.Number) and isinstance(stored, numbers.Number):
      return math.isclose(float(given), float(stored), rel_tol=1e-12)
    return given == stored
  return True


def _check_config_round_trip(name, layer_cls, layer, init_kwargs, input_data, call_kwargs, atol):
  config = layer.get_config()
  missing = sorted(key for key in init_kwargs if key not in config)
  assert not missing, (
    f"{name}: config check failed: get_config() lacks the init arguments {missing}."
  )
  changed = {
    key: (value, config[key])
    for key, value in init_kwargs.items()
    if not _same_value(value, config[key])
  }
  assert not changed, (
    f"{name}: config check failed: get_config() stores other values (given, stored): {changed}."
  )
  clone = layer_cls.from_config(copy.deepcopy(config))  # Wrapper.from_config pops "layer".
  # As JSON (tuples as lists): a functional model's from_config gives lists for tuples.
  assert _json_like(clone.get_config()) == _json_like(config), (
    f"{name}: config check failed: from_config(get_config()).get_config() differs:\n"
    f"{clone.get_config()}\n!=\n{config}"
  )
  _call(clone, input_data, call_kwargs)  # Builds the clone.
  shapes = [(w.path.split("/")[-1], tuple(w.shape)) for w in layer.weights]
  clone_shapes = [(w.path.split("/")[-1], tuple(w.shape)) for w in clone.weights]
  assert clone_shapes == shapes, (
    f"{name}: config check failed: the clone's weights {clone_shapes} differ from {shapes}."
  )
  _copy_state(layer, clone)
  expected = _numpy_outputs(_call(layer, input_data, call_kwargs))
  got = _numpy_outputs(_call(clone, input_data, call_kwargs))
  _assert_close(name, "config round-trip output", got, expected, atol)


def _symbolic(data):
  """`keras.Input`s like `data` (batch dimension None); dict inputs are named by their keys."""

  def spec(array, name=None):
    dtype = keras.backend.standardize_dtype(array.dtype)
    return keras.Input(shape=np.shape(array)[1:], dtype=dtype, name=name)

  def named(value, name):  # A dict argument (e.g. an output dict): Inputs named by its keys.
    if isinstance(value, dict):
      return {key: spec(v, name=key) for key, v in value.items()}
    return spec(value, name=name)

  if isinstance(data, dict):
    return {key: named(value, key) for key, value in data.items()}
  return keras.tree.map_structure(spec, data)


def _check_keras_round_trip(name, layer, input_data, call_kwargs, tmp_path, atol):
  _call(layer, input_data, call_kwargs, training=True)  # Moves any training-time state.
  inputs = _symbolic(input_data)
  symbolic_outputs = _call(layer, inputs, call_kwargs)
  symbolic = _flat(symbolic_outputs)
  eager = _flat(_call(layer, input_data, call_kwargs))
  assert len(symbolic) == len(eager), (
    f"{name}: symbolic output check failed: {len(symbolic)} symbolic, {len(eager)} eager outputs."
  )
  for i, (s, e) in enumerate(zip(symbolic, eager)):
    compatible = len(s.shape) == len(e.shape) and all(
      a is None or a == b for a, b in zip(s.shape, e.shape)
    )
    assert compatible and _dtype(s) == _dtype(e), (
      f"{name}: symbolic output check failed: output {i} is {s.shape} {_dtype(s)} "
      f"symbolically but {tuple(e.shape)} {_dtype(e)} eagerly."
    )
  model = keras.Model(inputs, symbolic_outputs)
  path = tmp_path / "m.keras"
  model.save(path)
  again = keras.saving.load_model(path)
  loaded = again.get_layer(layer.name)
  assert type(loaded) is type(layer), (
    f"{name}: .keras check failed: reloaded a {type(loaded).__name__}."
  )
  assert _json_like(loaded.get_config()) == _json_like(layer.get_config()), (
    f"{name}: .keras check failed: the reloaded config differs:\n"
    f"{loaded.get_config()}\n!=\n{layer.get_config()}"
  )
  names = [w.path.split("/")[-1] for w in layer.weights]
  loaded_names = [w.path.split("/")[-1] for w in loaded.weights]
  assert loaded_names == names, (
    f"{name}: .keras check failed: reloaded weights {loaded_names}, expected {names}."
  )
  for w, w2 in zip(layer.weights, loaded.weights):
    assert np.array_equal(_np(w2), _np(w)), (
      f"{name}: .keras check failed: weight {w.path} changed in the round trip."
    )
  _copy_state(layer, loaded)  # Weights are equal (checked); this syncs the seed states.
  batch = len(keras.tree.flatten(input_data)[0])
  expected = _numpy_outputs(model(input_data))
  got = _numpy_outputs(again.predict(input_data, batch_size=batch, verbose=0))
  _assert_close(name, ".keras round-trip prediction", got, expected, atol)
  return loaded


def _check_mixed_precision(name, layer_cls, init_kwargs, input_data, call_kwargs, expected_dtype):
  policy = keras.DTypePolicy(_MIXED)
  layer = _instantiate(layer_cls, init_kwargs, dtype=policy)
  outputs = _flat(_call(layer, input_data, call_kwargs))
  assert layer.variable_dtype == "float32", (
    f"{name}: mixed precision check failed: variable_dtype is {layer.variable_dtype}."
  )
  wrong = [(w.path, w.dtype) for w in layer.weights if w.dtype != "float32"]
  assert not wrong, (
    f"{name}: mixed precision check failed: variables not in float32 under {_MIXED}: {wrong}."
  )
  dtypes = tuple(_dtype(o) for o in outputs)
  assert all(d in ("float32", "bfloat16") for d in dtypes), (
    f"{name}: mixed precision check failed: output dtypes {dtypes} are not float32/bfloat16."
  )
  if expected_dtype is not None:
    assert all(d == expected_dtype for d in dtypes), (
      f"{name}: mixed precision check failed: output dtypes {dtypes}, expected {expected_dtype}."
    )
  for i, out in enumerate(_numpy_outputs(outputs)):
    assert np.all(np.isfinite(out)), (
      f"{name}: mixed precision check failed: output {i} has non-finite values under {_MIXED}."
    )
  return dtypes


def _loss(outputs):
  """`Σ mean(float32(output))`, the scalar the gradient check differentiates."""
  return sum(keras.ops.mean(keras.ops.cast(o, "float32")) for o in _flat(outputs))


def _gradients(layer, data, call_kwargs):
  """d loss / d trainable weights of one `training=True` call, with the backend's autodiff.

  None marks a weight the loss does not reach (TensorFlow's convention; under JAX, an
  exactly zero gradient).
  """
  variables = list(layer.trainable_variables)
  backend = keras.backend.backend()
  if backend == "tensorflow":
    import tensorflow as tf  # Only this backend's tape; the JAX run needs no TensorFlow.

    with tf.GradientTape() as tape:
      loss = _loss(_call(layer, data, call_kwargs, training=True))
    return tape.gradient(loss, variables)
  if backend == "jax":
    import jax

    fixed = [(v, v.value) for v in layer.non_trainable_variables]

    def loss_fn(trainable):
      # `Layer.__call__` inside a StatelessScope (what `stateless_call` does around `call`),
      # so that `training` reaches only the layers whose `call` takes it.
      with keras.StatelessScope(state_mapping=[*zip(variables, trainable), *fixed]):
        return _loss(_call(layer, data, call_kwargs, training=True))

    grads = jax.grad(loss_fn)([v.value for v in variables])
    # JAX has no None gradient, and one exactly zero gradient can be right (a weight behind
    # a zero-initialised scale, a bias under a LayerNorm): only all of them zero counts.
    return [None] * len(grads) if not any(np.any(_np(g)) for g in grads) else grads
  raise NotImplementedError(
    f"run_layer_test's gradient check supports the tensorflow and jax backends, not "
    f"KERAS_BACKEND={backend!r}; pass run_training_check=False or add the backend here."
  )


def _check_training_step(name, layer_cls, init_kwargs, input_data, call_kwargs):
  layer = _instantiate(layer_cls, init_kwargs)
  data = keras.tree.map_structure(keras.ops.convert_to_tensor, input_data)
  _call(layer, data, call_kwargs)  # Builds the layer.
  variables = list(layer.trainable_variables)
  if not variables:
    return
  grads = _gradients(layer, data, call_kwargs)
  missing = [v.path for v, g in zip(variables, grads) if g is None]
  assert not missing, (
    f"{name}: gradient check failed: no gradient reaches the trainable weights {missing}."
  )
  bad = [v.path for v, g in zip(variables, grads) if not np.all(np.isfinite(_np(g)))]
  assert not bad, f"{name}: gradient check failed: non-finite gradients of {bad}."
  before = [_np(v) for v in variables]
  keras.optimizers.SGD(0.1).apply_gradients(zip(grads, variables))
  moved = [v.path for v, b in zip(variables, before) if not np.array_equal(_np(v), b)]
  assert moved, (
    f"{name}: gradient check failed: one SGD(0.1) step changed none of the trainable "
    f"weights {[v.path for v in variables]}."
  )
