"""LogitNorm, focal and outlier-exposure losses vs NumPy transcriptions; OE batch mixing."""

import gin
import numpy as np
import pytest
import tensorflow as tf

from keras_unc.data import get_source, make_dataset, outliers
from keras_unc.methods import Deterministic, losses

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(0, 3, (6, 2, 5)).astype("float32")
LABELS = np.array([0, 4, 2, 1, 3, 0])


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_logitnorm_matches_reference():
  """hongxin001/logitnorm_ood common/loss_function.py LogitNormLoss.forward:
  norms = ||x||_2 + 1e-7; CE(x / norms / t)."""
  want = []
  for m in range(2):
    x = LOGITS[:, m]
    z = x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-7) / 0.04
    want.append(-_log_softmax(z)[np.arange(6), LABELS])
  got = losses.logitnorm_loss(LABELS, LOGITS, temperature=0.04)
  np.testing.assert_allclose(got, np.mean(want, 0), rtol=1e-5)
  with pytest.raises(ValueError, match="temperature must be > 0"):
    losses.logitnorm_loss(LABELS, LOGITS, temperature=0.0)


@pytest.mark.parametrize("adaptive", [False, True])
def test_focal_matches_paper(adaptive):
  """Mukhoti et al. 2020 FocalLoss / FocalLossAdaptive (FLSD-53: gamma 5 if p_y < 0.2)."""
  want = []
  for m in range(2):
    logp = _log_softmax(LOGITS[:, m])[np.arange(6), LABELS]
    p = np.exp(logp)
    g = np.where(p < 0.2, 5.0, 3.0) if adaptive else 3.0
    want.append(-((1 - p) ** g) * logp)
  got = losses.focal_loss(LABELS, LOGITS, gamma=3.0, sample_dependent=adaptive)
  np.testing.assert_allclose(got, np.mean(want, 0), rtol=1e-5)
  np.testing.assert_allclose(  # gamma 0 is cross-entropy
    losses.focal_loss(LABELS, LOGITS, gamma=0.0),
    losses.member_cross_entropy(LABELS, LOGITS),
    rtol=1e-5,
  )


def test_outlier_exposure_matches_reference():
  """hendrycks/outlier-exposure CIFAR/oe_scratch.py: CE(x[:n_in]) +
  0.5 * -(x[n_in:].mean(1) - logsumexp(x[n_in:], 1)).mean(); our batch mean equals it."""
  labels = np.array([0, 4, 2, -1, -1, -1])
  want = []
  for m in range(2):
    x = LOGITS[:, m]
    ce = -_log_softmax(x[:3])[np.arange(3), labels[:3]].mean()
    xo = x[3:]
    lse = np.log(np.exp(xo).sum(1))
    want.append(ce + 0.5 * -(xo.mean(1) - lse).mean())
  got = losses.outlier_exposure_loss(labels, LOGITS, weight=0.5)
  np.testing.assert_allclose(np.mean(got), np.mean(want), rtol=1e-5)


def test_bad_loss_names_choices():
  with pytest.raises(ValueError, match="logitnorm"):
    Deterministic(loss="logit_norm")


def test_oe_source_missing():
  with pytest.raises(ValueError, match="outlier_exposure_data.source"):
    outliers.outlier_exposure_data()


def test_synthetic_outliers_deterministic_and_not_images():
  images = RNG.integers(0, 256, (9, 8, 8, 1)).astype("uint8")
  a, b = outliers.synthetic_outliers(images), outliers.synthetic_outliers(images)
  np.testing.assert_array_equal(a, b)
  for i in (1, 2):  # permutations keep the pixel multiset, change the image
    np.testing.assert_array_equal(np.sort(a[i].ravel()), np.sort(images[i].ravel()))
  assert a.dtype == np.uint8 and not np.array_equal(a[1], images[1])


def test_mix_ratio_marker_and_resume():
  src = get_source("digits")
  gin.clear_config()
  with gin.unlock_config():
    gin.bind_parameter("outlier_exposure_data.source", "outliers:digits")
    gin.bind_parameter("outlier_exposure_data.ratio", 2.0)

  def batches(start, n):
    ds = make_dataset(src, "train", "", 8, train=True, seed=3, start_step=start)
    ds = outliers.mix_outliers(ds, 8, seed=3, start_step=start)
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]

  try:
    full, resumed = batches(0, 3), batches(2, 1)
  finally:
    gin.clear_config()
  x, y = full[0]
  assert x.shape[0] == 24 and (y[8:] == -1).all() and (y[:8] >= 0).all()
  np.testing.assert_array_equal(full[2][0], resumed[0][0])  # same outliers after resume
  np.testing.assert_array_equal(full[2][1], resumed[0][1])


def test_logitnorm_refuses_a_zero_head_and_says_which_init_to_set():
  with pytest.raises(ValueError, match="head_init = 'glorot_uniform'"):
    Deterministic(loss="logitnorm")
  assert Deterministic(loss="logitnorm", head_init="glorot_uniform").loss_name == "logitnorm"
  # Why: at zero logits the normalisation's gradient is ~1 / (tau * 1e-7).
  logits = tf.Variable(np.zeros((2, 1, 10), np.float32))
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(losses.logitnorm_loss(np.array([0, 3]), logits))
  assert np.abs(tape.gradient(loss, logits).numpy()).max() > 1e6
