"""Every method trains through the one trainer, exports, and its SavedModel reproduces
the in-process network; method-specific state survives checkpoints and export."""

import numpy as np
import pytest
import tensorflow as tf

from keras_unc import methods
from keras_unc.runtime import checkpoints
from tests.e2e.helpers import CLASSES, run_inprocess

# Small Monte Carlo / GP sizes and a 10-class-compatible factor count.
SMALL = [
  "het_head.num_factors = 3",
  "het_head.train_mc_samples = 8",
  "het_head.test_mc_samples = 16",
  "gp_head.num_inducing = 64",
  "gp_head.reset_every = 4",
  "ensemble.ensemble_size = 2",
  "BatchEnsemble.ensemble_size = 2",
  "ShallowEnsemble.num_heads = 2",
  "MCDropout.num_samples = 4",
  "MIMO.ensemble_size = 2",
  "MIMO.batch_repetitions = 2",
  "Packed.num_estimators = 2",
  "Rank1.ensemble_size = 2",
  "Rank1.num_eval_samples = 2",
  "Rank1.dataset_size = 64",
  "SWAG.max_num_models = 2",
  "SWAG.num_samples = 2",
  "Variational.num_eval_samples = 2",
  "Variational.dataset_size = 64",
  "train.total_steps = 6",
  "train.eval_every = 6",
  "train.checkpoint_every = 3",
  "train.evaluators = [@ClassificationEvaluator()]",
]
# Methods that need another backbone than tiny.gin's ViT. Packed-Ensembles: a ViT's LayerNorm
# would mix the members; the MLP (PackedDense) here, tests/layers/test_packed.py packs a ResNet.
BACKBONE = {"packed": ["build_network.backbone = @mlp", "mlp.width = 32", "mlp.depth = 2"]}


def _digits_uint8(n=16):
  from sklearn.datasets import load_digits

  x = load_digits().images[:n]
  return np.round(x * 255.0 / 16.0).astype("uint8")[..., None]


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_method_trains_and_export_matches_in_process(name, tmp_path):
  assert set(CLASSES) == set(methods.METHODS)
  params = SMALL + BACKBONE.get(name, []) + [f"train.method = @{CLASSES[name]}()"]
  result = run_inprocess(tmp_path, params=params)
  assert result["step"] == 6
  assert np.isfinite(result["metrics"]["test/accuracy"])
  images = _digits_uint8()
  served = tf.saved_model.load(result["export"]).signatures["serving_default"](
    images=tf.constant(images)
  )
  # Stochastic layers draw from seed-generator state that the export captured: the same
  # state in both, so the first call of each draws the same noise.
  local = result["network"](images.astype("float32"), training=False)
  for key in ("logits", "probs", "uncertainty", "embedding"):
    np.testing.assert_allclose(served[key].numpy(), np.asarray(local[key]), atol=2e-5, err_msg=key)
  if name in ("sngp", "hetsngp", "be_sngp"):  # GP variance from the cached L⁻ᵀ: no solve.
    signature = tf.saved_model.load(result["export"]).signatures["serving_default"]
    graph_def = signature.graph.as_graph_def()
    op_types = {n.op for n in graph_def.node}
    op_types.update(n.op for f in graph_def.library.function for n in f.node_def)
    assert not op_types & {"Cholesky", "MatrixTriangularSolve"}


def test_gp_precision_is_checkpointed_and_reset_each_epoch(tmp_path):
  result = run_inprocess(tmp_path, params=SMALL + ["train.method = @SNGP()"])
  gp = result["network"].get_layer("gp")
  precision = np.asarray(gp.precision_matrix if hasattr(gp, "precision_matrix") else gp.precision)
  # Resets at steps 0 and 4 (reset_every = 4): 2 batches of 32 accumulated since.
  assert np.abs(precision).max() > 1e-3  # P restarts at 0 at each reset.
  ckpt = checkpoints.Checkpointer(str(tmp_path / "checkpoints"))
  step, arrays, meta = ckpt.load_latest()
  assert step == 6 and meta["method"] == "sngp"
  stored = [
    arrays[f"model/{i:05d}"]
    for i, (path, _) in enumerate(meta["variables"])
    if path.startswith("gp/") or "/gp/" in path
  ]
  assert any(a.shape == precision.shape and np.allclose(a, precision) for a in stored)
