"""Weight averaging through the trainer: the SWAG state resumes bit-identically, and SWA's
evaluation and export see the averaged weights (SavedModel == in-process)."""

import keras
import numpy as np
import tensorflow as tf

from keras_unc.training import restore
from tests.e2e.helpers import final_model_arrays, max_abs_diff, run_inprocess, run_stopped

BASE = [
  "train.total_steps = 6",
  "train.eval_every = 6",
  "train.checkpoint_every = 2",
  "train.evaluators = []",
  "train.export_at_end = False",
]
SWAG = ["train.method = @SWAG()", "SWAG.swag_start = 0.5", "SWAG.max_num_models = 2"]


class _StopAt(keras.callbacks.Callback):
  def __init__(self, step):
    super().__init__()
    self.step = step

  def on_train_batch_end(self, batch, logs=None):
    if int(self.model.optimizer.iterations.numpy()) >= self.step:
      self.model.stop_training = True


def test_swag_state_resumes_bit_identically(tmp_path):
  # Collections at steps 4, 5, 6 (window K=2 rolls); the stopped run saved step 4.
  run_inprocess(tmp_path / "ref", "train", params=BASE + SWAG)
  stopped = run_stopped(tmp_path / "res", BASE + SWAG, _StopAt(4))
  assert stopped["step"] == 4
  assert stopped["network"].name.startswith("swag_")  # One collection: served as samples.
  run_inprocess(tmp_path / "res", "train", params=BASE + SWAG)
  step_ref, ref = final_model_arrays(tmp_path / "ref")
  step_res, res = final_model_arrays(tmp_path / "res")
  assert step_ref == step_res == 6
  assert max_abs_diff(ref, res) == 0.0  # Weights and SWAG moments/deviations alike.


def test_swa_serves_the_averaged_weights(tmp_path):
  params = [
    *BASE[:3],
    "train.evaluators = [@ClassificationEvaluator()]",
    "weight_averaging.kind = 'swa'",
    "weight_averaging.start = 0.5",
  ]
  result = run_inprocess(tmp_path, params=params)
  served = result["network"]
  assert not hasattr(served, "weight_average")  # The serving copy, not the training network.
  _, arrays = final_model_arrays(tmp_path)
  # The checkpoint's averaged means are the served network's trainable weights.
  means = [arrays[k] for k in sorted(arrays)][-len(served.trainable_variables) :]
  for v, m in zip(served.trainable_variables, means):
    np.testing.assert_array_equal(np.asarray(v), m)
  images = np.random.default_rng(0).integers(0, 255, (4, 8, 8, 1)).astype("uint8")
  exported = tf.saved_model.load(result["export"]).signatures["serving_default"]
  local = served(images.astype("float32"), training=False)
  np.testing.assert_allclose(
    exported(images=tf.constant(images))["probs"].numpy(), np.asarray(local["probs"]), atol=2e-5
  )
  # The standalone verbs (`calibrate`, `ensemble`) restore the run and serve the same model,
  # not the raw last iterate (which predicts differently).
  raw, _, _ = restore.restore_network(str(tmp_path))
  again = restore.served_network(raw)
  want = np.asarray(local["probs"])
  np.testing.assert_allclose(np.asarray(again(images.astype("float32"))["probs"]), want, atol=1e-6)
  assert not np.allclose(np.asarray(raw(images.astype("float32"))["probs"]), want, atol=1e-6)
