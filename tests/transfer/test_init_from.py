"""`import_weights` (gin): the trainer initialises its network from a public checkpoint."""

import numpy as np
import pytest

from keras_unc.backbones.pretrained import npz_import
from keras_unc.backbones.pretrained.init_from import import_weights
from tests.e2e.helpers import run_inprocess

BASE = ["train.total_steps=0", "train.evaluators=[]", "train.export_at_end=False"]


def test_train_imports_npz_named_in_gin(tmp_path):
  source = run_inprocess(tmp_path / "src", params=BASE + ["train.seed=1"])["network"]
  head = source.get_layer("head")  # Zero-initialised: make it distinguishable.
  head.kernel.assign(np.random.default_rng(0).normal(size=head.kernel.shape))
  path = str(tmp_path / "public.npz")
  exported = npz_import.export_npz(source, path, format="big_vision")
  assert "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel" in exported

  params = BASE + [f"import_weights.path='{path}'", "import_weights.format='big_vision'"]
  kept = run_inprocess(tmp_path / "kept", params=params + ["import_weights.keep_head=True"])
  fresh = run_inprocess(tmp_path / "fresh", params=params)
  for a, b, c in zip(source.variables, kept["network"].variables, fresh["network"].variables):
    if "gp" in a.path or "seed" in a.path:
      continue
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    if a.path.startswith("head/"):  # Fresh head: big_vision's zero-initialised kernel.
      np.testing.assert_array_equal(c.numpy(), 0.0, err_msg=a.path)
    else:
      np.testing.assert_array_equal(a.numpy(), c.numpy(), err_msg=a.path)


def test_import_weights_arguments_are_checked(tmp_path):
  assert import_weights(None) is None  # No path: nothing to do.
  with pytest.raises(FileNotFoundError, match="does not exist"):
    import_weights(None, str(tmp_path / "missing.npz"))
  with pytest.raises(ValueError, match="Unknown import_weights.format 'timm'"):
    import_weights(None, str(tmp_path), format="timm")
