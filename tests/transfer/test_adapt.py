"""Deterministic checkpoint -> BatchEnsemble / SNGP / heteroscedastic / Plex models
(`checkpoints.adapt`, `train.adapt_checkpoint`): shared weights copied, the rest fresh."""

import keras
import numpy as np
import pytest

from keras_unc import config
from keras_unc.methods import get_method
from keras_unc.runtime import checkpoints
from keras_unc.training.network import build_network

SMALL = [
  "BatchEnsemble.ensemble_size = 2",
  "ensemble.ensemble_size = 2",
  "ensemble.blocks = (0,)",
  "het_head.num_factors = 2",
  "het_head.train_mc_samples = 4",
  "het_head.test_mc_samples = 4",
  "gp_head.num_inducing = 8",
]
RESNET = [
  "build_network.backbone = @resnet",
  "resnet.depth = 18",
  "resnet.width = 0.0625",
  "resnet.stem = 'cifar'",
]


def _network(method, params=(), num_classes=10, seed=0):
  config.parse(["testing/tiny.gin"], SMALL + list(params), finalize=False)
  keras.utils.set_random_seed(seed)
  return build_network(get_method(method), num_classes, (8, 8, 1))


def _deterministic_checkpoint(tmp_path, params=(), num_classes=10):
  """A deterministic network with every weight random (so a copy is recognisable)."""
  net = _network("deterministic", params, num_classes)
  rng = np.random.default_rng(7)
  for v in net.variables:
    if "seed_generator" not in v.path:
      v.assign(rng.normal(size=v.shape).astype(v.dtype))
  opt = keras.optimizers.SGD()
  opt.build(net.trainable_variables)
  path = checkpoints.Checkpointer(str(tmp_path)).save(1, net, opt)
  stored = {v.path: np.array(v.numpy()) for v in net.variables}
  return path, stored


def _layer_key(path):
  parts = [p[:-3] if p.endswith("_sn") else p for p in path.split("/")]
  return parts[-2], parts[-1]


def _adapt(tmp_path, method, params=(), num_classes=10):
  path, det = _deterministic_checkpoint(tmp_path, params)
  net = _network(method, params, num_classes, seed=1)
  before = {v.path: np.array(v.numpy()) for v in net.variables}
  arrays, meta = checkpoints.read(path)
  report = checkpoints.adapt(net.variables, arrays, meta)
  by_key = {_layer_key(p): v for p, v in det.items()}
  return net, before, report, by_key


# method -> (substrings of the paths that must stay fresh, checkpoint paths left unused)
CASES = {
  "batchensemble": (("/alpha", "/gamma"), ()),
  "sngp": (("_sn/u", "gp/"), ("head/kernel", "head/bias")),
  "heteroscedastic": (("het/",), ("head/kernel", "head/bias")),
  "plex": (
    (
      "block0_mlp_dense_1/alpha",
      "block0_mlp_dense_1/gamma",
      "block0_mlp_dense_2/alpha",
      "block0_mlp_dense_2/gamma",
      "het/",
    ),
    ("head/kernel", "head/bias"),
  ),
}


def _is_fresh(path, fresh_parts):
  if path.endswith("/gamma") and "_ln_" in path or "encoder_norm" in path:
    return False  # LayerNorm scales are shared weights, not fast weights.
  return any(part in path for part in fresh_parts)


@pytest.mark.parametrize("method", sorted(CASES))
def test_shared_weights_copied_the_rest_fresh(tmp_path, method):
  fresh_parts, unused = CASES[method]
  net, before, report, det = _adapt(tmp_path, method)
  want_fresh, copied = [], 0
  for v in net.variables:
    if "seed_generator" in v.path:
      continue
    value = np.asarray(v.numpy())
    if _is_fresh(v.path, fresh_parts):
      want_fresh.append(v.path)
      np.testing.assert_array_equal(value, before[v.path], err_msg=v.path)  # Untouched.
    else:  # Copied, broadcast over members where the model has a member axis.
      stored = det[_layer_key(v.path)]
      np.testing.assert_array_equal(value, np.broadcast_to(stored, value.shape), err_msg=v.path)
      copied += 1
  assert sorted(report.fresh) == sorted(want_fresh)
  assert len(report.copied) == copied > 10
  assert sorted(report.unused) == sorted(unused)
  assert f"{copied} variables copied, {len(want_fresh)} freshly initialised" in report


def test_batchensemble_members_get_the_same_shared_weights(tmp_path):
  net, _, _, det = _adapt(tmp_path, "batchensemble")
  bias = net.get_layer("vit").get_layer("block0_mlp_dense_1").bias.numpy()
  assert bias.shape == (2, 32)
  np.testing.assert_array_equal(bias[0], det[("block0_mlp_dense_1", "bias")])
  np.testing.assert_array_equal(bias[1], det[("block0_mlp_dense_1", "bias")])


def test_spectral_norm_wrapped_resnet_convs_map(tmp_path):
  net, before, report, det = _adapt(tmp_path, "sngp", RESNET)
  conv = [v for v in net.variables if v.path.endswith("stage2_block1_conv1/kernel")][0]
  assert "_sn/" in conv.path  # The SNGP conv sits inside its spectral-norm wrapper...
  np.testing.assert_array_equal(conv.numpy(), det[("stage2_block1_conv1", "kernel")])
  moving = [v for v in net.variables if v.path.endswith("stage2_block1_bn1/moving_variance")][0]
  np.testing.assert_array_equal(moving.numpy(), det[("stage2_block1_bn1", "moving_variance")])
  # ...and only the power-iteration vectors and the GP are fresh.
  assert report.fresh and all(p.endswith("/u") or p.startswith("gp/") for p in report.fresh)
  for p in report.fresh:
    np.testing.assert_array_equal([v for v in net.variables if v.path == p][0].numpy(), before[p])


def test_head_shape_mismatch_is_reported(tmp_path):
  _, _, report, _ = _adapt(tmp_path, "batchensemble", num_classes=5)
  assert any(p.startswith("head/kernel (shape (16, 5) vs (16, 10))") for p in report.fresh)
  assert "head/kernel" in report.unused
  assert "head/kernel (shape (16, 5) vs (16, 10))" in str(report)
