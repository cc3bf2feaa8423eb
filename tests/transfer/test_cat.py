"""CAT backbones (RRL): concatenated member embeddings, two-stage head initialisation
(`cat_weights`), training through the one trainer and export as one SavedModel."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_unc import config
from keras_unc.data import get_source
from keras_unc.evaluators import SavedModelNetwork
from keras_unc.methods import Deterministic
from keras_unc.runtime import checkpoints
from keras_unc.training import export
from keras_unc.training.network import build_network
from keras_unc.transfer.cat import MemberHeads, load_backbone_weights
from tests.e2e.helpers import run_inprocess
from tests.transfer.protocol_helpers import cat_params, member_checkpoint

WIDE = ["vit.width = 16"]
NARROW = ["vit.width = 8", "vit.mlp_dim = 16"]  # A second member of another width.


@pytest.fixture(scope="module")
def members(tmp_path_factory):
  root = tmp_path_factory.mktemp("members")
  p0, net0 = member_checkpoint(root / "m0", WIDE, seed=0)
  p1, net1 = member_checkpoint(root / "m1", NARROW, seed=1)
  return (p0, p1), (net0, net1)


def _cat_network(paths, two_stage=True):
  config.parse(
    ["testing/tiny.gin"],
    cat_params(paths, two_stage, ["member1/vit.width = 8", "member1/vit.mlp_dim = 16"]),
    finalize=False,
  )
  keras.utils.set_random_seed(5)
  return build_network(Deterministic(), 10, (8, 8, 1))


def test_cat_embedding_and_two_stage_logits(members):
  paths, (net0, net1) = members
  cat = _cat_network(paths)
  images = get_source("digits").arrays("test")[0][:32].astype("float32")
  out = {k: np.asarray(v) for k, v in cat(images).items()}
  o0, o1 = ({k: np.asarray(v) for k, v in n(images).items()} for n in (net0, net1))
  assert out["embedding"].shape == (32, 16 + 8)
  np.testing.assert_allclose(
    out["embedding"], np.concatenate([o0["embedding"], o1["embedding"]], 1), atol=1e-5
  )
  # Head = members' heads concatenated / N: its logits are the mean of the members'.
  np.testing.assert_allclose(out["logits"], (o0["logits"] + o1["logits"]) / 2, atol=1e-5)
  head = cat.get_layer("head")
  k0, k1 = net0.get_layer("head").kernel.numpy(), net1.get_layer("head").kernel.numpy()
  np.testing.assert_allclose(head.kernel.numpy(), np.concatenate([k0, k1]) / 2, atol=1e-7)


def test_cat_exports_as_one_saved_model(members, tmp_path):
  paths, _ = members
  cat = _cat_network(paths)
  images = get_source("digits").arrays("test")[0][:16]
  path = export.export_saved_model(cat, str(tmp_path / "export"), (8, 8, 1))
  served = SavedModelNetwork(path)(tf.constant(images))
  np.testing.assert_allclose(
    np.asarray(served["probs"]), np.asarray(cat(images.astype("float32"))["probs"]), atol=1e-5
  )
  assert served["embedding"].shape == (16, 24)


def test_two_stage_trains_the_head_on_frozen_finetuned_members(members, tmp_path):
  paths, (net0, net1) = members
  params = cat_params(
    paths, two_stage=True, member_params=["member1/vit.width = 8", "member1/vit.mlp_dim = 16"]
  ) + [
    "build_network.freeze_backbone = True",
    "train.total_steps = 4",
    "train.eval_every = 4",
    "train.evaluators = []",
    "train.export_at_end = False",
  ]
  net = run_inprocess(tmp_path / "two_stage", "train", params)["network"]
  for i, member in enumerate((net0, net1)):
    inner = net.get_layer("cat").get_layer(f"member{i}")
    for got, want in zip(inner.variables, member.get_layer("vit").variables):
      np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=got.path)
  init = (
    np.concatenate([net0.get_layer("head").kernel.numpy(), net1.get_layer("head").kernel.numpy()])
    / 2
  )
  kernel = net.get_layer("head").kernel.numpy()
  assert kernel.shape == init.shape and not np.allclose(kernel, init)
  assert np.abs(kernel - init).max() < 0.5  # Trained from the members' heads, not zeros.


def test_wrong_member_checkpoint_names_the_mismatch(members):
  paths, _ = members
  config.parse(["testing/tiny.gin"], [], finalize=False)
  from keras_unc.backbones import vit

  narrow = vit(image_size=8, num_channels=1)  # width 16, but the checkpoint has 8
  with pytest.raises(
    checkpoints.CheckpointMismatchError,
    match=r"block0_attn_query/kernel \(shape \(16, 16\) vs \(8, 8\)",
  ):
    load_backbone_weights(narrow, paths[1])
  with pytest.raises(FileNotFoundError, match="No keras_unc checkpoint"):
    load_backbone_weights(narrow, "/nonexistent")


def test_cat_config_errors(members):
  paths, _ = members
  with pytest.raises(ValueError, match="2 members but 1 checkpoints"):
    config.parse(
      ["testing/tiny.gin"],
      cat_params(paths) + [f"cat_backbone.checkpoints = ['{paths[0]}']"],
      finalize=False,
    )
    build_network(Deterministic(), 10, (8, 8, 1))
  with pytest.raises(ValueError, match="members' heads give a kernel of shape"):
    MemberHeads([paths[0], paths[0], paths[1]])((24, 10))
