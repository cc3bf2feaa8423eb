"""Shared helpers of the protocol tests: tiny member checkpoints and CAT bindings."""

import gin
import keras
import numpy as np

from keras_unc import config
from keras_unc.methods import Deterministic
from keras_unc.runtime import checkpoints
from keras_unc.training.network import build_network


def member_checkpoint(
  folder, params=(), seed=0, num_classes=10, input_shape=(8, 8, 1), gin_file="testing/tiny.gin"
):
  """Writes the checkpoint of a tiny deterministic network (backbone initialised with
  `seed`, random non-zero head) to `folder`; returns (checkpoint path, network)."""
  gin.clear_config()
  config.parse([gin_file], list(params), finalize=False)
  keras.utils.set_random_seed(seed)
  net = build_network(Deterministic(), num_classes, input_shape)
  rng = np.random.default_rng(seed + 100)
  head = net.get_layer("head")
  head.kernel.assign(rng.normal(size=head.kernel.shape).astype("float32"))
  head.bias.assign(rng.normal(size=head.bias.shape).astype("float32"))
  opt = keras.optimizers.SGD()
  opt.build(net.trainable_variables)
  path = checkpoints.Checkpointer(str(folder)).save(1, net, opt)
  gin.clear_config()
  return path, net


def cat_params(paths, two_stage=False, member_params=()):
  """Gin bindings of a CAT backbone over members `member{i}/vit` loaded from `paths`."""
  members = ", ".join(f"@member{i}/vit" for i in range(len(paths)))
  params = [
    "build_network.backbone = @cat_backbone",
    f"cat_backbone.members = [{members}]",
    f"cat_backbone.checkpoints = {list(map(str, paths))}",
    *member_params,
  ]
  if two_stage:
    params += [
      "Deterministic.head_init = @member_head_kernel()",
      "Deterministic.head_bias_init = @member_head_bias()",
      f"member_head_kernel.checkpoints = {list(map(str, paths))}",
      f"member_head_bias.checkpoints = {list(map(str, paths))}",
    ]
  return params
