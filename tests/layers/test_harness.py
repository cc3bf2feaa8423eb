"""`run_layer_test` itself: it passes a correct layer and fails each kind of broken layer."""

import keras
import numpy as np
import pytest
from keras import ops

from tests.layers.helpers import run_layer_test

X = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")


def _register(cls):
  return keras.saving.register_keras_serializable(package="keras_unc_test")(cls)


@_register
class _HarnessScale(keras.layers.Layer):
  """A correct layer: `scale · x W` with one trainable `W [D, units]`."""

  def __init__(self, units=2, scale=1.0, **kwargs):
    super().__init__(**kwargs)
    self.units = units
    self.scale = scale

  def build(self, input_shape):
    self.w = self.add_weight(shape=(input_shape[-1], self.units), name="w")

  def call(self, inputs):
    return ops.matmul(inputs, self.w) * self.scale

  def compute_output_shape(self, input_shape):
    return (*input_shape[:-1], self.units)

  def get_config(self):
    return {**super().get_config(), "units": self.units, "scale": self.scale}


@_register
class _HarnessForgetsScale(_HarnessScale):
  """Broken: get_config drops `scale`, so from_config silently falls back to 1."""

  def get_config(self):
    config = super().get_config()
    del config["scale"]
    return config


@_register
class _HarnessStoresWrongScale(_HarnessScale):
  """Broken: get_config stores a constant instead of the argument."""

  def get_config(self):
    return {**super().get_config(), "scale": 1.0}


@_register
class _HarnessFromConfigDropsScale(_HarnessScale):
  """Broken: from_config rebuilds the layer without `scale`."""

  @classmethod
  def from_config(cls, config):
    return cls(units=config["units"], name=config["name"])


@_register
class _HarnessHiddenSign(_HarnessScale):
  """Broken: each instance flips a sign that the config does not record."""

  instances = 0

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    type(self).instances += 1
    self.sign = (-1.0) ** type(self).instances

  def call(self, inputs):
    return super().call(inputs) * self.sign


@_register
class _HarnessStopGradient(_HarnessScale):
  """Broken: the only weight sits behind a stop_gradient, so training cannot move it."""

  def call(self, inputs):
    return ops.matmul(inputs, ops.stop_gradient(self.w)) * self.scale


@_register
class _HarnessBfloat16Variable(_HarnessScale):
  """Broken: creates its variable in the compute dtype (bfloat16 under mixed precision)."""

  def build(self, input_shape):
    self.w = self.add_weight(
      shape=(input_shape[-1], self.units), name="w", dtype=self.compute_dtype
    )


@_register
class _HarnessCancelsInBfloat16(_HarnessScale):
  """Broken: `log((1 + 1e-4) − 1)` is finite in float32 but log(0) = −inf in bfloat16."""

  def call(self, inputs):
    y = super().call(inputs)
    return y + ops.log((1.0 + 1e-4 * ops.ones_like(y)) - 1.0)


@_register
class _HarnessFloat32TimesAutocast(_HarnessScale):
  """Broken: float32 math times an autocast variable (bfloat16 inside a mixed call) crashes."""

  def call(self, inputs):
    return ops.cast(inputs, "float32")[:, : self.units] * self.w[0] * self.scale


@_register
class _HarnessPythonState(_HarnessScale):
  """Broken: training updates a Python float, which a `.keras` file does not keep."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.offset = 0.0

  def call(self, inputs, training=None):
    if training:
      self.offset += 1.0
    return super().call(inputs) + self.offset


@_register
class _HarnessUnseededNoise(_HarnessScale):
  """Broken as a deterministic layer: adds noise from no seed generator of its own."""

  def call(self, inputs):
    return super().call(inputs) + keras.random.uniform((self.units,))


@_register
class _HarnessWrongOutputShape(_HarnessScale):
  """Broken: compute_output_shape (the symbolic shape) disagrees with `call`."""

  def compute_output_shape(self, input_shape):
    return (*input_shape[:-1], self.units + 1)


@_register
class _HarnessNegate(_HarnessScale):
  """A correct layer with a non-tensor call argument."""

  def call(self, inputs, negate=False):
    out = super().call(inputs)
    return -out if negate else out


def _run(layer_cls, tmp_path, init_kwargs=None, **kwargs):
  kwargs = {
    "expected_output_shape": (3, 2),
    "expected_num_trainable_weights": 1,
    "expected_num_non_trainable_weights": 0,
    "expected_num_seed_generators": 0,
    **kwargs,
  }
  init_kwargs = {"units": 2, "scale": 3.0} if init_kwargs is None else init_kwargs
  return run_layer_test(layer_cls, init_kwargs, X, tmp_path=tmp_path, **kwargs)


def test_correct_layer_passes_and_reports(tmp_path):
  report = _run(_HarnessScale, tmp_path, mixed_precision_output_dtype="bfloat16")
  assert report.mixed_output_dtypes == ("bfloat16",)
  assert isinstance(report.loaded_layer, _HarnessScale) and report.loaded_layer.scale == 3.0
  np.testing.assert_array_equal(report.loaded_layer.w.numpy(), report.layer.w.numpy())
  np.testing.assert_allclose(report.outputs[0], 3.0 * X @ report.layer.w.numpy(), atol=1e-5)


def test_call_kwargs_reach_every_call(tmp_path):
  report = _run(_HarnessNegate, tmp_path, call_kwargs={"negate": True})
  np.testing.assert_allclose(report.outputs[0], -3.0 * X @ report.layer.w.numpy(), atol=1e-5)
  again = report.loaded_layer
  np.testing.assert_allclose(np.asarray(again(X, negate=True)), report.outputs[0], atol=1e-6)
  with pytest.raises(ValueError, match="training"):
    _run(_HarnessScale, tmp_path, call_kwargs={"training": True})


@pytest.mark.parametrize(
  "layer_cls, match",
  [
    pytest.param(
      _HarnessForgetsScale,
      r"config check failed: get_config\(\) lacks .*'scale'",
      id="ForgetsScale",
    ),
    pytest.param(
      _HarnessStoresWrongScale,
      r"config check failed: get_config\(\) stores other values",
      id="StoresWrongScale",
    ),
    pytest.param(
      _HarnessFromConfigDropsScale,
      r"config check failed: from_config\(get_config\(\)\)",
      id="FromConfigDropsScale",
    ),
    pytest.param(_HarnessHiddenSign, "config round-trip output check failed", id="HiddenSign"),
    pytest.param(
      _HarnessStopGradient, "gradient check failed: no gradient reaches", id="StopGradient"
    ),
    pytest.param(
      _HarnessBfloat16Variable,
      "mixed precision check failed: variables not in float32",
      id="Bfloat16Variable",
    ),
    pytest.param(
      _HarnessCancelsInBfloat16,
      "mixed precision check failed: output 0 has non-finite",
      id="CancelsInBfloat16",
    ),
    pytest.param(
      _HarnessFloat32TimesAutocast,
      "mixed precision check failed with InvalidArgumentError",
      id="Float32TimesAutocast",
    ),
    pytest.param(
      _HarnessPythonState, r"\.keras round-trip prediction check failed", id="PythonState"
    ),
    pytest.param(_HarnessUnseededNoise, "determinism check failed", id="UnseededNoise"),
    pytest.param(_HarnessWrongOutputShape, "symbolic output check failed", id="WrongOutputShape"),
  ],
)
def test_broken_layer_fails_the_named_check(layer_cls, match, tmp_path):
  with pytest.raises(AssertionError, match=match):
    _run(layer_cls, tmp_path)


@pytest.mark.parametrize(
  "counts, match",
  [
    pytest.param(
      {"expected_num_trainable_weights": 2}, r"1 trainable weights .*expected 2", id="trainable"
    ),
    pytest.param(
      {"expected_num_non_trainable_weights": 1},
      r"0 non-trainable weights .*expected 1",
      id="non_trainable",
    ),
    pytest.param(
      {"expected_num_seed_generators": 1}, r"0 seed generators .*expected 1", id="seed_generators"
    ),
    pytest.param(
      {"expected_output_shape": (3, 5)},
      r"output shape check failed: got \[\(3, 2\)\]",
      id="output_shape",
    ),
  ],
)
def test_wrong_expectation_fails(counts, match, tmp_path):
  with pytest.raises(AssertionError, match=match):
    _run(_HarnessScale, tmp_path, **counts)


def test_declared_random_layer_that_is_deterministic_fails(tmp_path):
  with pytest.raises(AssertionError, match="randomness check failed"):
    _run(_HarnessScale, tmp_path, deterministic=False)
