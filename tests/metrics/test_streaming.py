"""Streaming keras metrics vs the exact NumPy functions, batched and under MirroredStrategy."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from keras_unc import metrics
from keras_unc.metrics import (
  StreamingAccuracy,
  StreamingAUROC,
  StreamingBrier,
  StreamingECE,
  StreamingNLL,
)

CUTS = (0, 97, 500, 501, 1200)  # Uneven batch boundaries (then the rest).
EXACT = {
  StreamingECE: metrics.expected_calibration_error,
  StreamingNLL: metrics.nll,
  StreamingBrier: metrics.brier_score,
  StreamingAccuracy: metrics.accuracy,
}


def _classification(seed, n=2000, c=6):
  rng = np.random.default_rng(seed)
  logits = rng.normal(scale=3.0, size=(n, c))
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
  pred = probs.argmax(axis=1)
  labels = np.where(rng.random(n) < probs.max(axis=1), pred, (pred + 1) % c)
  return probs, labels


def _peaked_msp(seed, n, margin, c=10):
  """1 - max softmax of a confident classifier: scores crowd near 0."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, c))
  logits[:, 0] += rng.normal(margin, 2.0, size=n)
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  probs /= probs.sum(axis=1, keepdims=True)
  return (1.0 - probs.max(axis=1)).astype(np.float32)


def _feed(metric, a, b):
  cuts = CUTS + (len(a),)
  for lo, hi in zip(cuts[:-1], cuts[1:]):
    metric.update_state(a[lo:hi], b[lo:hi])
  return float(metric.result())


@pytest.mark.parametrize("cls", list(EXACT))
def test_classification_metrics_match_exact(cls):
  probs, labels = _classification(0)
  got = _feed(cls(), labels, probs)
  expected = EXACT[cls](probs, labels)
  assert got == pytest.approx(expected, rel=2e-6, abs=1e-6)
  # One-hot / [B, 1] labels are reduced to class ids.
  assert _feed(cls(), np.eye(6)[labels], probs) == pytest.approx(got, abs=0)
  assert _feed(cls(), labels[:, None], probs) == pytest.approx(got, abs=0)


def test_streaming_ece_bins_float32_edges_exactly():
  # Confidences exactly on (float32-rounded) bin edges and in empty bins.
  edges = np.linspace(0, 1, 16)
  conf = np.float32(np.r_[edges[3], edges[3] + 1e-7, np.float32(0.2), edges[12], 1.0])
  probs = np.stack([conf, 1 - conf], axis=1).astype(np.float32)
  probs = np.where(probs.max(1, keepdims=True) < 0.5, probs[:, ::-1], probs)
  labels = np.array([0, 1, 0, 0, 1])
  m = StreamingECE()
  m.update_state(labels, probs)
  bins = metrics.calibration_bins(probs, labels)
  np.testing.assert_array_equal(m.counts.numpy(), bins.counts)
  assert float(m.result()) == pytest.approx(
    metrics.expected_calibration_error(probs, labels), abs=1e-7
  )


def test_sample_weight_equals_repetition():
  probs, labels = _classification(1, n=300)
  weights = np.random.default_rng(2).integers(0, 4, size=300)
  rep_p, rep_y = np.repeat(probs, weights, axis=0), np.repeat(labels, weights)
  for cls, exact in EXACT.items():
    m = cls()
    m.update_state(labels, probs, sample_weight=weights)
    assert float(m.result()) == pytest.approx(exact(rep_p, rep_y), rel=1e-5, abs=1e-6)
  scores = probs[:, 0]
  pos = labels == 0
  m = StreamingAUROC()
  m.update_state(pos, scores, sample_weight=weights)
  assert float(m.result()) == pytest.approx(
    roc_auc_score(np.repeat(pos, weights), np.repeat(scores, weights)), abs=1e-3
  )


def test_streaming_auroc_exact_on_coarse_scores_and_nan_for_one_class():
  rng = np.random.default_rng(3)
  # Scores on a grid coarser than the bins: the histogram AUROC is exact.
  scores = rng.integers(0, 11, size=3000) / 10.0
  pos = rng.random(3000) < 0.3 + 0.4 * scores
  m = StreamingAUROC()
  got = _feed(m, pos, scores)
  assert got == pytest.approx(roc_auc_score(pos, scores), abs=1e-6)
  # Linear binning on another range.
  m = StreamingAUROC(num_bins=64, binning="linear", score_range=(-1.0, 2.0))
  assert _feed(m, pos, scores) == pytest.approx(roc_auc_score(pos, scores), abs=1e-6)
  m = StreamingAUROC()
  m.update_state(np.ones(5), np.linspace(0, 1, 5))
  assert np.isnan(float(m.result()))
  with pytest.raises(ValueError, match="binning"):
    StreamingAUROC(binning="log")


def test_streaming_auroc_beats_keras_auc_on_peaked_scores():
  n = 20000
  scores = np.concatenate([_peaked_msp(4, n, 9.0), _peaked_msp(5, n, 6.0)])
  is_ood = np.r_[np.zeros(n), np.ones(n)]
  exact = roc_auc_score(is_ood, scores)
  keras_auc = keras.metrics.AUC(num_thresholds=200)
  ours = StreamingAUROC()
  for lo in range(0, 2 * n, 5000):
    keras_auc.update_state(is_ood[lo : lo + 5000], scores[lo : lo + 5000])
    ours.update_state(is_ood[lo : lo + 5000], scores[lo : lo + 5000])
  keras_err = abs(float(keras_auc.result()) - exact)
  our_err = abs(float(ours.result()) - exact)
  assert keras_err > 0.01
  assert our_err < 1e-4
  # The documented bound holds and is itself below 1e-3 here.
  assert our_err <= float(ours.error_bound()) < 1e-3


def test_mirrored_strategy_two_replicas():
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  probs, labels = _classification(6, n=1000)
  scores, pos = probs[:, 0], labels == 0
  with strategy.scope():
    streaming = {cls: cls() for cls in EXACT}
    auc = StreamingAUROC()

  def halves(array):
    half = len(array) // 2
    return strategy.experimental_distribute_values_from_function(
      lambda ctx: array[
        ctx.replica_id_in_sync_group * half : (ctx.replica_id_in_sync_group + 1) * half
      ]
    )

  for start in (0, 400):  # Two distributed steps of 400 + 600 examples.
    stop = 400 if start == 0 else 1000
    y, p = halves(labels[start:stop]), halves(probs[start:stop])
    for m in streaming.values():
      strategy.run(m.update_state, args=(y, p))
    strategy.run(auc.update_state, args=(halves(pos[start:stop]), halves(scores[start:stop])))
  for cls, m in streaming.items():
    single = cls()
    single.update_state(labels, probs)
    assert float(m.result()) == pytest.approx(float(single.result()), rel=1e-6, abs=1e-7)
    assert float(m.result()) == pytest.approx(EXACT[cls](probs, labels), rel=2e-6, abs=1e-6)
  assert float(auc.result()) == pytest.approx(metrics.auroc(scores, pos), abs=1e-4)


def test_compile_and_evaluate_under_mirrored_strategy():
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  rng = np.random.default_rng(7)
  x = rng.normal(size=(600, 4)).astype(np.float32)
  y = (x[:, 0] + rng.normal(scale=0.5, size=600) > 0).astype(np.int64) + (x[:, 1] > 1)
  with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Softmax()])
    model.compile(
      loss="sparse_categorical_crossentropy",
      metrics=[StreamingECE(), StreamingNLL(), StreamingBrier(), StreamingAccuracy(name="acc")],
    )
  got = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
  probs = model.predict(x, batch_size=600, verbose=0)
  assert got["ece"] == pytest.approx(metrics.expected_calibration_error(probs, y), abs=1e-5)
  assert got["nll"] == pytest.approx(metrics.nll(probs, y), rel=1e-5)
  assert got["brier"] == pytest.approx(metrics.brier_score(probs, y), rel=1e-5)
  assert got["acc"] == pytest.approx(metrics.accuracy(probs, y), abs=1e-6)
