"""`build_network.freeze_backbone`: a linear probe / uncertainty module on a fixed backbone."""

import numpy as np

from tests.e2e.helpers import run_inprocess


def test_frozen_backbone_keeps_its_weights_and_the_head_learns(tmp_path):
  params = [
    "train.total_steps=10",
    "train.eval_every=10",
    "train.evaluators=[]",
    "train.export_at_end=False",
    "build_network.freeze_backbone=True",
  ]
  fresh = run_inprocess(tmp_path / "init", params=params + ["train.total_steps=0"])["network"]
  before = {v.path: np.array(v.numpy()) for v in fresh.variables}
  network = run_inprocess(tmp_path / "probe", params=params)["network"]
  backbone = network.get_layer("vit").variables
  ids = {id(v) for v in backbone}
  head = [v for v in network.trainable_variables if id(v) not in ids]
  assert backbone and head
  assert not any(v.trainable for v in backbone)
  for v in backbone:  # Same seed: identical initialisation, and training never moved it.
    np.testing.assert_array_equal(v.numpy(), before[v.path], err_msg=v.path)
  assert any(not np.array_equal(v.numpy(), before[v.path]) for v in head)
