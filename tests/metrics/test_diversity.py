"""Tests for ensemble diversity and per-member metrics (SciPy / sklearn references)."""

import itertools

import numpy as np
import pytest
from scipy import special
from sklearn.metrics import accuracy_score, log_loss

from keras_unc.metrics import ensemble_diversity, member_metrics


def _member_logits(seed, n=200, m=4, c=5):
  rng = np.random.default_rng(seed)
  shared = rng.normal(scale=2.0, size=(n, 1, c))
  return shared + rng.normal(scale=1.0, size=(n, m, c))


def _reference_diversity(probs):
  """uncertainty-baselines average_pairwise_diversity, pair by pair."""
  n, m, _ = probs.shape
  dis, kl, cos = [], [], []
  for i, j in itertools.combinations(range(m), 2):
    p, q = probs[:, i], probs[:, j]
    dis.append(np.mean(p.argmax(1) != q.argmax(1)))
    kl.append(np.mean(np.sum(special.rel_entr(p, q), axis=1)))
    cos.append(
      np.mean([p[k] @ q[k] / np.linalg.norm(p[k]) / np.linalg.norm(q[k]) for k in range(n)])
    )
  return {
    "disagreement": np.mean(dis),
    "average_kl": np.mean(kl),
    "cosine_similarity": np.mean(cos),
  }


def test_ensemble_diversity_matches_reference():
  logits = _member_logits(0)
  probs = special.softmax(logits, axis=-1)
  got = ensemble_diversity(probs)
  expected = _reference_diversity(probs)
  assert set(got) == set(expected)
  for key, value in expected.items():
    assert got[key] == pytest.approx(value, abs=1e-12), key
    assert isinstance(got[key], float)
  from_logits = ensemble_diversity(logits, from_logits=True)
  for key, value in expected.items():
    assert from_logits[key] == pytest.approx(value, abs=1e-12), key
  assert 0.0 < got["disagreement"] < 1.0 and got["average_kl"] > 0


def test_ensemble_diversity_identical_members_and_zeros():
  probs = np.tile(np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])[:, None], (1, 3, 1))
  got = ensemble_diversity(probs)
  assert got["disagreement"] == 0.0
  assert got["average_kl"] == pytest.approx(0.0, abs=1e-15)  # 0 log 0 = 0
  assert got["cosine_similarity"] == pytest.approx(1.0, abs=1e-15)


def test_ensemble_diversity_errors():
  with pytest.raises(ValueError, match="at least 2 members"):
    ensemble_diversity(np.full((4, 1, 2), 0.5))
  with pytest.raises(ValueError, match="3-D"):
    ensemble_diversity(np.full((4, 2), 0.5))
  with pytest.raises(ValueError, match="must sum to 1"):
    ensemble_diversity(np.full((4, 2, 2), 0.4))


def test_member_metrics_match_sklearn():
  logits = _member_logits(1, n=300, m=3, c=4)
  labels = np.random.default_rng(2).integers(0, 4, size=300)
  probs = special.softmax(logits, axis=-1)
  accs = [accuracy_score(labels, probs[:, k].argmax(1)) for k in range(3)]
  nlls = [log_loss(labels, probs[:, k], labels=range(4)) for k in range(3)]
  got = member_metrics(logits, labels, per_member=True)
  assert got["member_accuracy"] == pytest.approx(np.mean(accs), abs=1e-12)
  assert got["member_nll"] == pytest.approx(np.mean(nlls), rel=1e-10)
  for k in range(3):
    assert got[f"member_{k}_accuracy"] == pytest.approx(accs[k], abs=1e-12)
    assert got[f"member_{k}_nll"] == pytest.approx(nlls[k], rel=1e-10)
  assert set(member_metrics(logits, labels)) == {"member_accuracy", "member_nll"}
  # [N, C] is a single member; huge logits stay finite (exact log-softmax).
  big = np.array([[1000.0, 0.0], [0.0, 1000.0]])
  assert member_metrics(big, np.array([0, 0])) == {"member_accuracy": 0.5, "member_nll": 500.0}
  with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
    member_metrics(big, np.array([0, 2]))
