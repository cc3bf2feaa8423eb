"""The loss options of issue 15 (LogitNorm, focal, outlier exposure) train through the one
trainer with any method, export, and the SavedModel reproduces the in-process network; the
outlier stream of outlier exposure resumes exactly."""

import numpy as np
import pytest
import tensorflow as tf

from tests.e2e.helpers import run_inprocess, run_stopped

COMMON = [
  "train.total_steps = 6",
  "train.checkpoint_every = 3",
  "train.eval_every = 6",
  "train.evaluators = [@ClassificationEvaluator()]",
  # (The synthetic outliers come from the training images of the in-distribution source.)
  "outlier_exposure_data.source = 'outliers:digits'",
  "outlier_exposure_data.ratio = 1.0",
]
OPTIONS = {
  "logitnorm": [
    "train.method = @Deterministic()",
    "Deterministic.loss = 'logitnorm'",
    "Deterministic.head_init = 'glorot_uniform'",
  ],
  "focal": ["train.method = @Deterministic()", "Deterministic.loss = 'focal'"],
  # Any method takes a loss option: here MC dropout with outlier exposure.
  "outlier_exposure": [
    "train.method = @MCDropout()",
    "MCDropout.num_samples = 3",
    "MCDropout.loss = 'outlier_exposure'",
  ],
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_loss_option_trains_and_export_matches_in_process(name, tmp_path):
  result = run_inprocess(tmp_path, params=COMMON + OPTIONS[name])
  assert result["step"] == 6
  assert np.isfinite(result["metrics"]["test/nll"])
  images = np.random.default_rng(0).uniform(0, 255, (8, 8, 8, 1)).round().astype("uint8")
  served = tf.saved_model.load(result["export"]).signatures["serving_default"](
    images=tf.constant(images)
  )
  local = result["network"](images.astype("float32"), training=False)
  for key in ("logits", "probs", "uncertainty"):
    np.testing.assert_allclose(served[key].numpy(), np.asarray(local[key]), atol=2e-5, err_msg=key)


def test_outlier_exposure_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
  from keras_unc.data import outliers

  mixed = []
  mix = outliers.mix_outliers

  def spy(ds, batch_size, **kwargs):  # The trainer must mix the outliers into its batches.
    out = mix(ds, batch_size, **kwargs)
    mixed.append((batch_size, tuple(out.element_spec[0].shape)))
    return out

  monkeypatch.setattr(outliers, "mix_outliers", spy)
  params = COMMON + [
    "train.method = @Deterministic()",
    "Deterministic.loss = 'outlier_exposure'",
    "train.evaluators = []",
    "train.export_at_end = False",
    "train.deterministic_ops = True",
  ]
  ref = run_inprocess(tmp_path / "ref", "train", params)
  assert mixed, "train() never called outliers.mix_outliers with loss='outlier_exposure'"
  stopped = run_stopped(tmp_path / "res", params)
  assert stopped["step"] == 3
  res = run_inprocess(tmp_path / "res", "train", params)
  assert res["step"] == 6
  for a, b in zip(ref["network"].weights, res["network"].weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
