"""`finetune` and `linear_probe` options: per-variable learning-rate multipliers, a frozen
prefix, BatchNorm before the linear probe."""

import re

import keras
import numpy as np
import pytest

from keras_unc.training import optim
from keras_unc.training.layerwise import frozen_prefix, with_lr_multipliers
from tests.e2e.helpers import run_inprocess

G = np.array([0.5, -1.0, 2.0], "float32")


def _step(optimizer, steps=1, init=(1.0, -2.0, 3.0)):
  """Variables a (x0), b (x0.5), c (x1) from the same values, the same gradient each step;
  returns their updates (new - old)."""
  variables = [keras.Variable(np.array(init, "float32"), name=n) for n in "abc"]
  opt = with_lr_multipliers(optimizer, {"^a": 0.0, "^b": 0.5})
  opt.build(variables)
  for _ in range(steps):
    opt.apply_gradients([(G, v) for v in variables])
  return [v.numpy() - np.array(init, "float32") for v in variables]


def test_sgd_momentum_multiplier_zero_and_half():
  da, db, dc = _step(keras.optimizers.SGD(0.1, momentum=0.9), steps=3)
  np.testing.assert_array_equal(da, 0.0)
  # By hand: velocity v_t = 0.9 v_{t-1} - lr g, so the update after 3 steps is
  # -lr g (1 + 1.9 + 2.71), and half of it with the learning rate halved.
  np.testing.assert_allclose(dc, -0.1 * G * (1 + 1.9 + 2.71), rtol=1e-5)
  np.testing.assert_allclose(db, 0.5 * dc, rtol=1e-5)


def test_adamw_multiplier_scales_update_and_decay():
  lr, wd, init = 0.01, 0.1, np.array([1.0, -2.0, 3.0], "float32")
  da, db, dc = _step(keras.optimizers.AdamW(lr, weight_decay=wd), init=tuple(init))
  # Decay first (w -= lr wd w), then the first Adam step: m_hat = g, v_hat = g^2, so the
  # update is lr g / |g| (up to epsilon).
  want = -lr * wd * init - lr * G / np.abs(G)
  np.testing.assert_allclose(dc, want, rtol=1e-4)
  np.testing.assert_allclose(db, 0.5 * dc, rtol=1e-4)
  np.testing.assert_array_equal(da, 0.0)  # Neither updated nor decayed.


def test_make_optimizer_config_round_trip():
  opt = optim.make_optimizer(100, name="sgd", learning_rate=0.1, lr_multipliers={"^head/": 10.0})
  assert isinstance(opt, keras.optimizers.SGD)
  assert opt.lr_multipliers == (("^head/", 10.0),)
  again = type(opt).from_config(opt.get_config())
  assert again.lr_multipliers == opt.lr_multipliers
  with pytest.raises(ValueError, match="multipliers must be >= 0"):
    optim.make_optimizer(100, lr_multipliers={"^head/": -1.0})


def test_frozen_prefix_regexes():
  vit = re.compile(frozen_prefix(blocks=2))
  assert all(
    vit.match(n) for n in ("patch_embedding", "posemb", "block0_ln_1", "block1_mlp_dense_2")
  )
  assert not any(vit.match(n) for n in ("block2_attn_query", "block10_ln_1", "encoder_norm"))
  resnet = re.compile(frozen_prefix(backbone="resnet", stages=1))
  assert resnet.match("stem_conv") and resnet.match("stage1_block2_bn1")
  assert not resnet.match("stage2_block1_conv1")
  with pytest.raises(ValueError, match="unknown backbone"):
    frozen_prefix(backbone="convnext")
  with pytest.raises(ValueError, match="`stages` is for ResNets"):
    frozen_prefix(stages=2)


PARAMS = [
  "train.total_steps = 6",
  "train.eval_every = 6",
  "train.evaluators = []",
  "train.export_at_end = False",
]


def _weights(network):
  return {v.path: np.array(v.numpy()) for v in network.variables}


def test_finetune_with_frozen_prefix_and_multipliers(tmp_path):
  fresh = _weights(
    run_inprocess(tmp_path / "init", "train", PARAMS + ["train.total_steps = 0"])["network"]
  )
  net = run_inprocess(
    tmp_path / "ft",
    "train",
    PARAMS
    + [
      "build_network.freeze = '^patch_embedding'",
      "make_optimizer.lr_multipliers = {'^block0_attn_': 0.0}",
    ],
  )["network"]
  after = _weights(net)
  assert not net.get_layer("vit").get_layer("patch_embedding").trainable
  for path, value in after.items():
    if path.startswith(("patch_embedding", "block0_attn_")) or "posemb" in path:
      np.testing.assert_array_equal(value, fresh[path], err_msg=path)
    elif path.startswith(("block0_mlp", "head/")):
      assert not np.array_equal(value, fresh[path]), path


def test_freeze_pattern_matching_nothing_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="matches no layer with weights.*block0_attn_query"):
    run_inprocess(tmp_path / "bad", "train", PARAMS + ["build_network.freeze = '^blok0'"])


def test_linear_probe_with_batchnorm_head(tmp_path):
  fresh = _weights(
    run_inprocess(
      tmp_path / "init",
      "train",
      PARAMS + ["train.total_steps = 0", "Deterministic.head_batchnorm = True"],
    )["network"]
  )
  result = run_inprocess(
    tmp_path / "probe",
    "train",
    PARAMS + ["build_network.freeze_backbone = True", "Deterministic.head_batchnorm = True"],
  )
  net = result["network"]
  for v in net.get_layer("vit").variables:
    np.testing.assert_array_equal(v.numpy(), fresh[v.path], err_msg=v.path)
  bn, head = net.get_layer("head_bn"), net.get_layer("head")
  assert not np.allclose(bn.moving_mean.numpy(), 0.0)  # Statistics of the embeddings.
  assert not bn.scale and not bn.center
  images = np.random.default_rng(0).integers(0, 255, (4, 8, 8, 1)).astype("float32")
  out = net(images)
  z = np.asarray(out["embedding"])  # The embedding stays the backbone's, before BN.
  x = (z - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
  want = x @ head.kernel.numpy() + head.bias.numpy()
  np.testing.assert_allclose(np.asarray(out["logits"])[:, 0], want, atol=1e-4)
