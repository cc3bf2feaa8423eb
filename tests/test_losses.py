"""Per-example losses against NumPy by hand."""

import numpy as np
import pytest
from scipy.special import log_softmax

from keras_unc.methods import losses


def _data(b=5, m=3, c=4, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(b, m, c)).astype("float32") * 3, rng.integers(0, c, b)


def test_ensemble_nll_is_minus_log_of_the_member_mean_probability():
  logits, labels = _data()
  p = np.exp(log_softmax(logits.astype(np.float64), -1)).mean(1)
  by_hand = -np.log(p[np.arange(len(labels)), labels])
  np.testing.assert_allclose(np.asarray(losses.ensemble_nll(labels, logits)), by_hand, rtol=1e-5)
  # Soft labels: cross-entropy of the predictive against them.
  soft = np.random.default_rng(1).dirichlet(np.ones(4), 5).astype("float32")
  np.testing.assert_allclose(
    np.asarray(losses.ensemble_nll(soft, logits)), -(soft * np.log(p)).sum(-1), rtol=1e-5
  )


def test_ensemble_nll_is_at_most_the_mean_member_loss():
  # Jensen: −log mean p ≤ mean −log p, equal for one member.
  logits, labels = _data(seed=2)
  ens = np.asarray(losses.ensemble_nll(labels, logits))
  mem = np.asarray(losses.member_cross_entropy(labels, logits))
  assert np.all(ens <= mem + 1e-6) and np.any(ens < mem - 1e-3)
  np.testing.assert_allclose(
    np.asarray(losses.ensemble_nll(labels, logits[:, :1])),
    np.asarray(losses.member_cross_entropy(labels, logits[:, :1])),
    rtol=1e-6,
  )


def test_member_cross_entropy_with_smoothing_by_hand():
  logits, labels = _data(seed=3)
  eps, c = 0.1, logits.shape[-1]
  target = np.eye(c)[labels] * (1 - eps) + eps / c
  by_hand = -(target[:, None] * log_softmax(logits.astype(np.float64), -1)).sum(-1).mean(1)
  np.testing.assert_allclose(
    np.asarray(losses.member_cross_entropy(labels, logits, eps)), by_hand, rtol=1e-5
  )


@pytest.mark.parametrize("members", [False, True])
def test_sigmoid_cross_entropy_by_hand_and_stable(members):
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(6, 2, 5)).astype("float32") * 4
  logits[0, 0, 0], logits[1, 0, 1] = 80.0, -80.0  # exp overflow territory.
  labels = rng.integers(0, 2, (6, 5)).astype("float32")
  x = logits if members else logits[:, 0]
  z = x.astype(np.float64)
  y = labels[:, None] if members else labels
  # −[y log σ(z) + (1 − y) log(1 − σ(z))] with log σ(z) = −logaddexp(0, −z).
  per_class = y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)
  by_hand = per_class.sum(-1)
  by_hand = by_hand.mean(1) if members else by_hand
  got = np.asarray(losses.sigmoid_cross_entropy(labels, x))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, by_hand, rtol=1e-5)
