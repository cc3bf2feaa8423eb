"""End to end: ub's backbone MC dropout and BatchEnsemble's per-member BatchNorm train
through the one trainer and export; the SavedModel returns the mean over samples / members.
"""

import keras
import numpy as np
import pytest


def _np(x):
  return keras.ops.convert_to_numpy(x)


# --- Through the trainer and the export -----------------------------------------------------

TINY_RESNET_GIN = [
  "build_network.backbone = @resnet",
  "resnet.depth = 18",
  "resnet.width = 0.0625",
  "resnet.stem = 'cifar'",
  "train.total_steps = 4",
  "train.eval_every = 4",
  "train.checkpoint_every = 4",
  "train.evaluators = [@ClassificationEvaluator()]",
]


@pytest.mark.parametrize(
  "method",
  [
    [
      "train.method = @MCDropout()",
      "MCDropout.placement = 'backbone'",
      "MCDropout.filterwise = True",
      "MCDropout.num_samples = 3",
    ],
    [
      "train.method = @BatchEnsemble()",
      "BatchEnsemble.ensemble_size = 2",
      "ensemble.use_ensemble_bn = True",
    ],
  ],
  ids=["mc_dropout_backbone", "batchensemble_ensemble_bn"],
)
def test_trains_and_export_returns_the_sample_mean(method, tmp_path):
  import tensorflow as tf

  from tests.e2e.helpers import run_inprocess

  result = run_inprocess(tmp_path, params=TINY_RESNET_GIN + method)
  kinds = {type(layer).__name__ for layer in result["network"].backbone.layers}
  assert ("BatchNormBatchEnsemble" in kinds) == ("ensemble.use_ensemble_bn = True" in method)
  assert ("MCDropout" in kinds) == ("MCDropout" in method[0])
  assert result["step"] == 4 and np.isfinite(result["metrics"]["test/accuracy"])
  images = np.random.default_rng(0).integers(0, 255, size=(5, 8, 8, 1)).astype("uint8")
  served = tf.saved_model.load(result["export"]).signatures["serving_default"](
    images=tf.constant(images)
  )
  logits = served["logits"].numpy()
  assert logits.shape[:2] == (5, 3 if "MCDropout" in method[0] else 2)
  assert not np.allclose(logits[:, 0], logits[:, 1])  # Samples / members differ.
  mean = _np(keras.ops.softmax(logits, axis=-1)).mean(axis=1)
  np.testing.assert_allclose(served["probs"].numpy(), mean, atol=1e-5)  # The sample mean.
  # The same seed-generator state in both: the SavedModel reproduces the network.
  local = result["network"](images.astype("float32"), training=False)
  np.testing.assert_allclose(served["probs"].numpy(), _np(local["probs"]), atol=2e-5)
