"""Acquisition scores against NumPy written by hand, and batch selection."""

import numpy as np
import pytest

from keras_unc.active_learning import acquisition as acq


def _softmax(z):
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture
def probs():
  rng = np.random.default_rng(0)
  p = _softmax(rng.normal(size=(7, 4)) * 2)
  p[0] = [1.0, 0.0, 0.0, 0.0]  # 0 log 0 must count as 0
  p[1] = [0.25, 0.25, 0.25, 0.25]
  return p


def test_entropy_margin_msp_by_hand(probs):
  for i, row in enumerate(probs):
    h = -sum(q * np.log(q) for q in row if q > 0)
    a, b = sorted(row, reverse=True)[:2]
    assert acq.entropy_scores(probs)[i] == pytest.approx(h, abs=1e-12)
    assert acq.margin_scores(probs)[i] == pytest.approx(1 - (a - b), abs=1e-12)
    assert acq.msp_scores(probs)[i] == pytest.approx(1 - max(row), abs=1e-12)
  assert acq.entropy_scores(probs)[1] == pytest.approx(np.log(4))
  assert acq.entropy_scores(probs)[0] == 0.0


def test_bald_by_hand():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(5, 3, 4)) * 3
  got = acq.bald_scores(logits)
  for i in range(5):
    members = [np.exp(l) / np.exp(l).sum() for l in logits[i]]
    mean = sum(members) / 3
    h = lambda q: -float(np.sum(q * np.log(q)))
    want = h(mean) - sum(h(m) for m in members) / 3
    assert got[i] == pytest.approx(want, abs=1e-12)
  # Members that agree carry no epistemic uncertainty.
  same = np.repeat(rng.normal(size=(2, 1, 4)), 5, axis=1)
  np.testing.assert_allclose(acq.bald_scores(same), 0.0, atol=1e-12)


def test_bald_needs_members():
  with pytest.raises(ValueError, match="M=1.*mc_dropout"):
    acq.bald_scores(np.zeros((3, 1, 4)))
  with pytest.raises(ValueError, match=r"\[N, M, C\]"):
    acq.bald_scores(np.zeros((3, 4)))


def test_density_by_hand():
  rng = np.random.default_rng(2)
  emb = rng.normal(size=(30, 3))
  labels = np.repeat([0, 1, 2], 10)
  emb[labels == 1] += 3.0
  pool = np.concatenate([emb[:5], rng.normal(size=(6, 3)) * 5])
  got = acq.density_scores(emb, labels, pool)
  means = [emb[labels == k].mean(axis=0) for k in range(3)]
  cov = sum(np.outer(z - means[y], z - means[y]) for z, y in zip(emb, labels)) / len(emb)
  inv = np.linalg.inv(cov)
  loglik = []
  for z in pool:
    d = [float((z - m) @ inv @ (z - m)) for m in means]
    loglik.append(np.log(sum(np.exp(-dk / 2) for dk in d)))
  loglik = np.array(loglik)
  np.testing.assert_allclose(got, loglik.max() - loglik, rtol=1e-8, atol=1e-8)
  assert got.min() == 0.0 and got[5:].mean() > got[:5].mean()  # far points first


def test_density_rank_deficient_is_finite():
  # Fewer labelled points than dimensions (the usual start of active learning).
  rng = np.random.default_rng(3)
  s = acq.density_scores(rng.normal(size=(4, 16)), [0, 0, 1, 1], rng.normal(size=(9, 16)))
  assert np.isfinite(s).all() and (s >= 0).all()


def test_compute_scores_dispatch_and_unknown():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 2, 3))
  out = {
    "logits": logits,
    "probs": _softmax(logits).mean(axis=1),
    "embedding": rng.normal(size=(6, 2)),
  }
  np.testing.assert_allclose(acq.compute_scores("margin", out), acq.margin_scores(out["probs"]))
  np.testing.assert_allclose(acq.compute_scores("bald", out), acq.bald_scores(logits))
  dens = acq.compute_scores("density", out, labelled=[0, 1, 2, 3], labelled_labels=[0, 0, 1, 1])
  np.testing.assert_allclose(
    dens, acq.density_scores(out["embedding"][:4], [0, 0, 1, 1], out["embedding"])
  )
  u1 = acq.compute_scores("uniform", out, rng=np.random.default_rng(5))
  u2 = acq.compute_scores("uniform", out, rng=np.random.default_rng(5))
  np.testing.assert_array_equal(u1, u2)
  with pytest.raises(ValueError, match="Unknown acquisition strategy 'bold'.*bald"):
    acq.compute_scores("bold", out)


def test_select_top_k_excludes_labelled():
  scores = np.array([0.1, 0.9, 0.5, 0.8, 0.3, 0.95])
  assert acq.select(scores, 3).tolist() == [5, 1, 3]
  assert acq.select(scores, 3, exclude=[5, 3]).tolist() == [1, 2, 4]
  assert acq.select(np.ones(4), 2).tolist() == [0, 1]  # ties: lower index first


@pytest.mark.parametrize("noise", ["softmax", "power", "softrank"])
def test_gumbel_zero_scale_is_top_k_and_seeded(noise):
  rng = np.random.default_rng(0)
  scores = rng.uniform(size=200)
  exclude = rng.choice(200, 30, replace=False)
  top = acq.select(scores, 20, exclude=exclude)
  for beta in (0.0, 1e-12):
    got = acq.select(
      scores, 20, exclude=exclude, noise=noise, beta=beta, rng=np.random.default_rng(9)
    )
    np.testing.assert_array_equal(got, top)
  a = acq.select(scores, 20, exclude=exclude, noise=noise, beta=1.0, rng=np.random.default_rng(4))
  b = acq.select(scores, 20, exclude=exclude, noise=noise, beta=1.0, rng=np.random.default_rng(4))
  c = acq.select(scores, 20, exclude=exclude, noise=noise, beta=1.0, rng=np.random.default_rng(5))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c) and not np.array_equal(a, top)
  for picked in (a, c):
    assert len(set(picked.tolist())) == 20 and not set(picked.tolist()) & set(exclude.tolist())


def test_gumbel_softmax_samples_proportionally():
  # softmax acquisition of one item = sampling p ∝ exp(s / beta) (Gumbel-max trick).
  scores = np.log(np.array([1.0, 2.0, 5.0]))
  rng = np.random.default_rng(0)
  counts = np.bincount(
    [acq.select(scores, 1, noise="softmax", beta=1.0, rng=rng)[0] for _ in range(4000)], minlength=3
  )
  np.testing.assert_allclose(counts / 4000, [0.125, 0.25, 0.625], atol=0.03)


def test_select_bad_input():
  with pytest.raises(ValueError, match="Cannot acquire 5 examples: the pool has 2 unlabelled"):
    acq.select(np.arange(4.0), 5, exclude=[0, 1])
  with pytest.raises(ValueError, match="Unknown acquisition noise 'gauss'"):
    acq.select(np.arange(4.0), 1, noise="gauss")
  with pytest.raises(ValueError, match="non-negative"):
    acq.select(np.array([-1.0, 2.0]), 1, noise="power", beta=1.0, rng=np.random.default_rng(0))
  with pytest.raises(ValueError, match="NaN"):
    acq.select(np.array([np.nan, 2.0]), 1)


def test_initial_selection():
  labels = np.repeat(np.arange(5), 20)
  got = acq.initial_selection(labels, 12, mode="balanced", rng=np.random.default_rng(0))
  counts = np.bincount(labels[got], minlength=5)
  assert len(set(got.tolist())) == 12 and sorted(counts.tolist()) == [2, 2, 2, 3, 3]
  rnd = acq.initial_selection(labels, 12, mode="random", rng=np.random.default_rng(0))
  assert len(set(rnd.tolist())) == 12
  with pytest.raises(ValueError, match="Unknown initial selection"):
    acq.initial_selection(labels, 3, mode="stratified", rng=np.random.default_rng(0))
  with pytest.raises(ValueError, match="Cannot start with 200"):
    acq.initial_selection(labels, 200, rng=np.random.default_rng(0))
