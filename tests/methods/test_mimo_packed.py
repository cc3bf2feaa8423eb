"""MIMO and Packed-Ensembles as methods: the MIMO network's train/test passes, its seeded
permutations resume exactly, and the errors that name the fix."""

import functools

import numpy as np
import pytest

from keras_unc import methods
from keras_unc.backbones import resnet, vit
from keras_unc.training.network import build_network
from tests.e2e.helpers import run_inprocess, run_stopped

TINY_VIT = functools.partial(
  vit, "Ti/4", width=16, depth=1, mlp_dim=32, num_heads=2, pooling="gap", posemb="sincos2d"
)


def _images(n=4):
  return np.random.default_rng(0).uniform(0, 255, (n, 8, 8, 1)).astype("float32")


def test_mimo_network_stacks_members_and_repeats_the_training_batch():
  method = methods.MIMO(ensemble_size=3, batch_repetitions=2)
  net = build_network(method, 10, (8, 8, 1), backbone=TINY_VIT, image_size=8, num_channels=1)
  assert net.backbone.inputs[0].shape[-1] == 3  # The stem sees M * C channels.
  x = _images()
  test = net(x, training=False)
  assert tuple(test["logits"].shape) == (4, 3, 10) and tuple(test["embedding"].shape) == (4, 16)
  assert np.abs(np.asarray(test["logits"][:, 0] - test["logits"][:, 1])).max() > 1e-4
  train = net(x, training=True)
  # R * M slots per example of the batch; one predictive per original row.
  assert tuple(train["logits"].shape) == (4, 6, 10) and tuple(train["probs"].shape) == (4, 10)
  # One forward pass at test: a single backbone call on [B, H, W, M*C].
  stacked, _ = net.get_layer("mimo_input")(x)
  np.testing.assert_array_equal(np.asarray(stacked)[..., 0], np.asarray(stacked)[..., 2])


def test_mimo_refuses_a_separate_head():
  with pytest.raises(ValueError, match="cannot be built as a separate head"):
    build_network(
      methods.MIMO(ensemble_size=2),
      10,
      (8, 8, 1),
      backbone=TINY_VIT,
      image_size=8,
      num_channels=1,
      separate_head=True,
    )


def test_packed_widths_must_divide():
  backbone = functools.partial(resnet, 18, width=0.125, stem="cifar")  # 8 channels x alpha 2.
  with pytest.raises(ValueError, match=r"alpha=2, gamma=1, num_estimators M=3"):
    build_network(methods.Packed(num_estimators=3), 10, (8, 8, 1), backbone=backbone, image_size=8)


RESUME = [
  "train.method = @MIMO()",
  "MIMO.ensemble_size = 2",
  "MIMO.batch_repetitions = 2",
  "MIMO.input_repetition_probability = 0.5",
  "train.total_steps = 6",
  "train.checkpoint_every = 3",
  "train.eval_every = 6",
  "train.evaluators = []",
  "train.export_at_end = False",
]


def _seed_state(network):
  return np.asarray(network.get_layer("mimo_input").seed_generator.state.numpy())


def test_mimo_permutations_resume_exactly(tmp_path):
  # The input permutations come from a SeedGenerator whose state is checkpointed: stopping
  # at step 3 and resuming ends where the uninterrupted run does, permutations included.
  ref = run_inprocess(tmp_path / "ref", "train", RESUME)
  stopped = run_stopped(tmp_path / "res", RESUME)
  assert stopped["step"] == 3
  half = _seed_state(stopped["network"])
  res = run_inprocess(tmp_path / "res", "train", RESUME)
  assert res["step"] == 6
  assert not np.array_equal(half, _seed_state(res["network"]))  # It drew 3 more times.
  np.testing.assert_array_equal(_seed_state(ref["network"]), _seed_state(res["network"]))
  for a, b in zip(ref["network"].weights, res["network"].weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
