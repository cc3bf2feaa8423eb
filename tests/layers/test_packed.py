"""Packed-Ensembles layers: the shared harness, torch-uncertainty's PackedLinear /
PackedConv2d transcribed in NumPy on copied weights, width errors, and member independence
in a packed ResNet."""

import functools

import numpy as np
import pytest

from keras_unc.backbones import resnet
from keras_unc.layers.packed import PackedConv2D, PackedDense
from keras_unc.methods.packed import Packed
from keras_unc.training.network import build_network
from tests.layers.helpers import run_layer_test


def _data(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype("float32")


HARNESS_CASES = [
  pytest.param(
    PackedDense,
    {"units": 6, "alpha": 2, "num_estimators": 2, "gamma": 2, "activation": "relu"},
    _data(3, 8),
    {"expected_output_shape": (3, 12), "expected_num_trainable_weights": 2},
    id="dense",
  ),
  pytest.param(
    PackedDense,
    {"units": 5, "alpha": 2, "num_estimators": 4, "first": True, "use_bias": False},
    _data(3, 2, 7),  # Tokens: any leading axes.
    {"expected_output_shape": (3, 2, 10), "expected_num_trainable_weights": 1},
    id="dense_first",
  ),
  pytest.param(
    PackedDense,
    {"units": 3, "alpha": 2, "num_estimators": 4, "last": True},
    _data(3, 8),
    {"expected_output_shape": (3, 12), "expected_num_trainable_weights": 2},
    id="dense_last",
  ),
  pytest.param(
    PackedConv2D,
    {"filters": 4, "kernel_size": 3, "alpha": 2, "num_estimators": 4, "padding": "same"},
    _data(2, 5, 5, 8),
    {"expected_output_shape": (2, 5, 5, 8), "expected_num_trainable_weights": 2},
    id="conv",
  ),
  pytest.param(
    PackedConv2D,
    {"filters": 4, "kernel_size": 3, "alpha": 2, "num_estimators": 2, "first": True, "strides": 2},
    _data(2, 7, 7, 1),
    {"expected_output_shape": (2, 3, 3, 8), "expected_num_trainable_weights": 2},
    id="conv_first",
  ),
]


@pytest.mark.parametrize("layer_cls, init_kwargs, input_data, expected", HARNESS_CASES)
def test_layer_harness(layer_cls, init_kwargs, input_data, expected, tmp_path):
  run_layer_test(layer_cls, init_kwargs, input_data, tmp_path=tmp_path, **expected)


def _torch_packed_linear(inputs, weight, num_groups, bias):
  """torch-uncertainty `layers/functional/packed.py::packed_linear(implementation="einsum")`:
  `einsum("...ki,kij->...kj", rearrange(inputs, "... (m d) -> ... m d", m=G),
  weight.transpose(1, 2)).flatten(start_dim=-2) + bias`, weight `[G, out/G, in/G]`."""
  x = inputs.reshape(*inputs.shape[:-1], num_groups, -1)
  out = np.einsum("...ki,kij->...kj", x, np.transpose(weight, (0, 2, 1)))
  out = out.reshape(*out.shape[:-2], -1)
  return out + bias if bias is not None else out


def _torch_conv2d_groups(x, weight, bias, groups, stride, padding):
  """`torch.nn.Conv2d(groups=G)` as torch-uncertainty's `PackedConv2d` builds it, NCHW, weight
  `[Cout, Cin/G, kh, kw]`: output channel o of group g = o // (Cout/G) correlates input
  channels `[g*Cin/G, (g+1)*Cin/G)`; symmetric zero `padding`."""
  n, c_in, h, w = x.shape
  c_out, per_in, kh, kw = weight.shape
  per_out = c_out // groups
  xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
  oh, ow = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
  out = np.zeros((n, c_out, oh, ow), np.float64)
  for o in range(c_out):
    g = o // per_out
    xs = xp[:, g * per_in : (g + 1) * per_in]
    for i in range(oh):
      for j in range(ow):
        patch = xs[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
        out[:, o, i, j] = np.sum(patch * weight[o], axis=(1, 2, 3))
  return out + (bias[None, :, None, None] if bias is not None else 0.0)


@pytest.mark.parametrize(
  "first, last, gamma", [(False, False, 2), (True, False, 1), (False, True, 1)]
)
def test_dense_matches_torch_uncertainty_packed_linear(first, last, gamma):
  m, alpha, units = 2, 2, 4
  layer = PackedDense(
    units, alpha=alpha, num_estimators=m, gamma=gamma, first=first, last=last,
    bias_initializer="random_normal",
  )  # fmt: skip
  x = _data(4, 8, seed=1)
  y = np.asarray(layer(x))
  g = layer.groups
  assert g == (1 if first else m * gamma)
  kernel = layer.kernel.numpy()  # [in/G, out]: column block k is group k's W_k.
  weight = np.stack(
    [kernel[:, k * (kernel.shape[1] // g) : (k + 1) * (kernel.shape[1] // g)].T for k in range(g)]
  )
  want = _torch_packed_linear(x, weight, g, layer.bias.numpy())
  np.testing.assert_allclose(y, want, atol=1e-5)
  assert y.shape[-1] == units * (m if last else alpha)
  if last:  # torch: rearrange "b (m h) -> (m b) h"; ours: member m = channels [m*h, (m+1)*h).
    torch_rows = want.reshape(4, m, units).transpose(1, 0, 2).reshape(m * 4, units)
    np.testing.assert_allclose(y.reshape(4, m, units)[:, 1], torch_rows[4:], atol=1e-5)


@pytest.mark.parametrize("stride, padding", [(1, "same"), (2, "valid")])
def test_conv_matches_torch_conv2d_groups_and_m_small_convs(stride, padding):
  m, gamma, alpha, filters = 2, 2, 2, 4
  layer = PackedConv2D(
    filters, 3, alpha=alpha, num_estimators=m, gamma=gamma, strides=stride, padding=padding,
    bias_initializer="random_normal",
  )  # fmt: skip
  x = _data(2, 6, 6, 8, seed=2)
  y = np.asarray(layer(x))
  kernel, bias = layer.kernel.numpy(), layer.bias.numpy()  # [3, 3, Cin/G, Cout]
  assert kernel.shape == (3, 3, 8 // (m * gamma), filters * alpha)
  torch_pad = 1 if padding == "same" else 0
  want = _torch_conv2d_groups(
    x.transpose(0, 3, 1, 2), kernel.transpose(3, 2, 0, 1), bias, m * gamma, stride, torch_pad
  ).transpose(0, 2, 3, 1)
  np.testing.assert_allclose(y, want, atol=1e-4)
  # = G independent small convolutions on the channel slices.
  g, per_in, per_out = m * gamma, 8 // (m * gamma), filters * alpha // (m * gamma)
  for k in range(g):
    small = _torch_conv2d_groups(
      x[..., k * per_in : (k + 1) * per_in].transpose(0, 3, 1, 2),
      kernel[..., k * per_out : (k + 1) * per_out].transpose(3, 2, 0, 1),
      bias[k * per_out : (k + 1) * per_out],
      1,
      stride,
      torch_pad,
    ).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y[..., k * per_out : (k + 1) * per_out], small, atol=1e-4)


def test_split_and_grouped_implementations_agree():
  x = _data(2, 5, 5, 8, seed=4)
  split = PackedConv2D(4, 3, alpha=2, num_estimators=2, gamma=2, padding="same")
  grouped = PackedConv2D(
    4, 3, alpha=2, num_estimators=2, gamma=2, padding="same", implementation="grouped"
  )
  want = np.asarray(split(x))
  grouped(x)
  grouped.set_weights(split.get_weights())
  np.testing.assert_allclose(np.asarray(grouped(x)), want, atol=1e-5)
  with pytest.raises(ValueError, match="Unknown implementation"):
    PackedConv2D(4, 3, implementation="sparse")


def test_widths_that_do_not_divide_name_alpha_gamma_and_m():
  with pytest.raises(ValueError, match=r"alpha=2, gamma=1, num_estimators M=4"):
    PackedConv2D(3, 1, alpha=2, num_estimators=4)(_data(1, 2, 2, 8))  # 6 outputs, 4 groups.
  with pytest.raises(ValueError, match=r"M\*gamma = 3\*2"):
    PackedDense(6, alpha=2, num_estimators=3, gamma=2)(_data(1, 10))  # 10 inputs, 6 groups.
  with pytest.raises(ValueError, match="not an integer"):
    PackedDense(3, alpha=1.5)(_data(1, 8))
  for bad, message in (
    (dict(alpha=0), "alpha must be a number > 0"),
    (dict(gamma=0), "gamma must be an int >= 1"),
    (dict(num_estimators=0), r"num_estimators \(M\)"),
  ):
    with pytest.raises(ValueError, match=message):
      PackedDense(4, **bad)


def test_packed_resnet_members_depend_only_on_their_channel_group():
  # A packed ResNet: after the shared stem, member m's logits come from its channel groups
  # only. Perturbing member 1's stem outputs changes member 1's logits, never member 0's.
  method = Packed(num_estimators=2, alpha=2)
  backbone = functools.partial(resnet, 18, width=0.125, stem="cifar")
  net = build_network(method, 10, (8, 8, 1), backbone=backbone, image_size=8, num_channels=1)
  x = np.random.default_rng(0).uniform(0, 255, (3, 8, 8, 1)).astype("float32")
  before = np.asarray(net(x, training=False)["logits"])
  inner = net.backbone
  stem = inner.get_layer("stem_conv")
  assert stem.first and stem.groups == 1 and stem.out_channels == 16
  assert inner.get_layer("stage1_block1_conv2").groups == 2
  # No projection shortcut where the single ResNet has an identity one (width_factor).
  names = {layer.name for layer in inner.layers}
  assert "stage1_block1_shortcut_conv" not in names and "stage2_block1_shortcut_conv" in names
  kernel = stem.kernel.numpy()
  kernel[..., 8:] += 0.5 * _data(*kernel[..., 8:].shape, seed=3)
  stem.kernel.assign(kernel)
  after = np.asarray(net(x, training=False)["logits"])
  np.testing.assert_allclose(after[:, 0], before[:, 0], atol=1e-5)
  assert np.abs(after[:, 1] - before[:, 1]).max() > 1e-3
  head = net.get_layer("head")
  assert head.last and head.groups == 2 and tuple(before.shape) == (3, 2, 10)
