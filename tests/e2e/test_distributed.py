"""MirroredStrategy over two logical CPUs equals one device on the same global batch."""

import numpy as np

from tests.e2e.helpers import final_model_arrays, max_abs_diff, run_inprocess

PARAMS = [
  "train.total_steps=10",
  "train.checkpoint_every=10",
  "train.eval_every=10",
  "train.evaluators=[]",
]


def test_mirrored_equals_one_device(tmp_path):
  one = run_inprocess(tmp_path / "one", "train", PARAMS + ["get_strategy.name='one_device'"])
  import gin

  gin.clear_config()
  two = run_inprocess(tmp_path / "two", "train", PARAMS + ["get_strategy.name='mirrored'"])
  assert one["step"] == two["step"] == 10
  _, a = final_model_arrays(tmp_path / "one")
  _, b = final_model_arrays(tmp_path / "two")
  assert max_abs_diff(a, b) < 1e-5
  # Training moved the weights, so equality is not trivial.
  gin.clear_config()
  assert any(np.abs(v).sum() > 0 for v in a.values())
