"""Output-convention layers and the input adapter: the shared harness and math by hand."""

import numpy as np
import pytest

from keras_unc.layers import InputAdapter, MemberAxis, Predictive, UncertaintyScore
from keras_unc.layers.outputs import MemberMean
from tests.layers.helpers import run_layer_test


def _x(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _probs(b, c, seed=0):
  e = np.exp(_x(b, c, seed=seed))
  return e / e.sum(-1, keepdims=True)


# None of these layers holds a weight or a seed generator. Predictive computes in float32 by
# design (its `call` casts the logits); the others follow the compute dtype.
HARNESS_CASES = [
  pytest.param(
    MemberAxis,
    {"num_members": 3, "train_members": 1},
    _x(6, 4),
    {"expected_output_shape": (2, 3, 4), "mixed_precision_output_dtype": "bfloat16"},
    id="member_axis",
  ),
  pytest.param(
    MemberMean,
    {"num_members": 2},
    _x(6, 4),
    {"expected_output_shape": (3, 4), "mixed_precision_output_dtype": "bfloat16"},
    id="member_mean",
  ),
  pytest.param(
    Predictive,
    {"kind": "softmax"},
    _x(5, 3, 4),
    {"expected_output_shape": (5, 4), "mixed_precision_output_dtype": "float32"},
    id="predictive_softmax",
  ),
  pytest.param(
    Predictive,
    {"kind": "sigmoid"},
    _x(5, 3, 4),
    {"expected_output_shape": (5, 4), "mixed_precision_output_dtype": "float32"},
    id="predictive_sigmoid",
  ),
  pytest.param(
    UncertaintyScore,
    {"kind": "msp"},
    _probs(4, 3),
    {"expected_output_shape": (4,), "mixed_precision_output_dtype": "bfloat16"},
    id="uncertainty_msp",
  ),
  pytest.param(
    UncertaintyScore,
    {"kind": "entropy"},
    _probs(4, 3),
    {"expected_output_shape": (4,), "mixed_precision_output_dtype": "bfloat16"},
    id="uncertainty_entropy",
  ),
  pytest.param(
    InputAdapter,
    {"image_size": (6, 5), "num_channels": 3, "value_range": (0.0, 1.0)},
    np.random.default_rng(0).integers(0, 256, size=(2, 4, 4, 1)).astype("uint8"),
    {"expected_output_shape": (2, 6, 5, 3), "mixed_precision_output_dtype": "bfloat16"},
    id="input_adapter_uint8",
  ),
]


@pytest.mark.parametrize("layer_cls, init_kwargs, input_data, expected", HARNESS_CASES)
def test_layer_harness(layer_cls, init_kwargs, input_data, expected, tmp_path):
  run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    tmp_path=tmp_path,
    expected_num_trainable_weights=0,
    expected_num_non_trainable_weights=0,
    expected_num_seed_generators=0,
    **expected,
  )


def test_member_axis_splits_tiled_batch():
  m, b, c = 3, 2, 4
  x = np.arange(m * b * c, dtype="float32").reshape(m * b, c)
  out = np.asarray(MemberAxis(m)(x))
  assert out.shape == (b, m, c)
  for i in range(m):  # Member i owns rows [i*B, (i+1)*B).
    np.testing.assert_array_equal(out[:, i], x[i * b : (i + 1) * b])


def test_member_mean_averages_the_tiled_members():
  m, b, d = 3, 2, 4
  x = _x(m * b, d)
  expected = x.reshape(m, b, d).mean(0)
  np.testing.assert_allclose(np.asarray(MemberMean(m)(x)), expected, atol=1e-6)
  layer = MemberMean(m, train_members=1)
  np.testing.assert_allclose(np.asarray(layer(x, training=True)), x, atol=1e-6)


def test_predictive_is_member_mean_of_softmax():
  logits = _x(5, 3, 4)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  expected = (e / e.sum(-1, keepdims=True)).mean(1)
  np.testing.assert_allclose(np.asarray(Predictive()(logits)), expected, atol=1e-6)


def test_uncertainty_scores():
  p = np.array([[1.0, 0.0, 0.0], [0.5, 0.25, 0.25]], "float32")
  np.testing.assert_allclose(np.asarray(UncertaintyScore("msp")(p)), [0.0, 0.5], atol=1e-7)
  h = -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))
  np.testing.assert_allclose(np.asarray(UncertaintyScore("entropy")(p)), [0.0, h], atol=1e-6)
  with pytest.raises(ValueError, match="msp"):
    UncertaintyScore("variance")


def test_input_adapter_resizes_rescales_and_repeats_channels():
  x = np.full((2, 4, 4, 1), 255, "uint8")
  x[0] = 0
  out = np.asarray(InputAdapter(8, num_channels=3)(x))
  assert out.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(out[0], -1.0)
  np.testing.assert_allclose(out[1], 1.0)
  same = np.asarray(InputAdapter(4, num_channels=1, value_range=(0, 1))(x.astype("float32")))
  np.testing.assert_allclose(same, x / 255.0, atol=1e-6)


def test_input_adapter_channel_mismatch_is_clear():
  with pytest.raises(ValueError, match="channels"):
    InputAdapter(4, num_channels=3)(np.zeros((1, 4, 4, 2), "float32"))
