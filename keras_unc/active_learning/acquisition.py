"""Acquisition scores and batch selection for active learning.

Every score is "higher = acquire first" and non-negative (so the power acquisition can take
its log):

| strategy | score of a pool example |
| --- | --- |
| `uniform` | U(0, 1): a uniformly random batch |
| `entropy` | H[p] = -sum_c p_c log p_c of the predictive `probs` |
| `margin` | 1 - (p_(1) - p_(2)), the two largest predictive probabilities |
| `msp` | 1 - max_c p_c (least confidence) |
| `bald` | H[mean_m p_m] - mean_m H[p_m] over the M members / MC samples of `logits [N, M, C]` (Houlsby et al. 2011; Gal et al. 2017) |
| `density` | max_pool(l) - l, l(z) = logsumexp_k(-d_k(z) / 2), d_k the squared Mahalanobis distance to class k's mean under one shared covariance fitted on the labelled embeddings (uncertainty-baselines' LDA density score): low density first |

Batch selection takes the top-k of the scores; with Gumbel noise it samples a diverse
batch instead (Kirsch et al. 2023, "Stochastic Batch Acquisition"): top-k of
`key(s) + beta * Gumbel(0, 1)` with `key` = `s` (softmax acquisition, p ∝ exp(s / beta)),
`log s` (power, p ∝ s^(1/beta)) or `-log rank(s)` (softrank, p ∝ rank^(-1/beta)).
`beta` is the Gumbel scale (the paper's 1/β): `beta = 0` is exactly the top-k.
"""

import numpy as np
from scipy.special import logsumexp

STRATEGIES = ("uniform", "entropy", "margin", "msp", "bald", "density")
NOISES = ("none", "softmax", "power", "softrank")

_TINY = 1e-300  # log(0) guard for the power acquisition.


def _check_probs(probs, name="probs"):
  p = np.asarray(probs, np.float64)
  if p.ndim != 2 or p.shape[1] < 2:
    raise ValueError(f"{name} must be [N, C] with C >= 2 classes, got shape {p.shape}.")
  return p


def _entropy(p):
  """-sum p log p over the last axis (0 log 0 = 0)."""
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def entropy_scores(probs):
  """Predictive entropy H[p] of `probs [N, C]`, in nats."""
  return _entropy(_check_probs(probs))


def margin_scores(probs):
  """1 - (largest - second largest probability) of `probs [N, C]`."""
  top2 = np.sort(_check_probs(probs), axis=1)[:, -2:]
  return 1.0 - (top2[:, 1] - top2[:, 0])


def msp_scores(probs):
  """1 - max_c p_c of `probs [N, C]` (least confidence)."""
  return 1.0 - _check_probs(probs).max(axis=1)


def member_probs(logits):
  """Softmax of `logits [N, M, C]` over classes, float64."""
  z = np.asarray(logits, np.float64)
  if z.ndim != 3:
    raise ValueError(f"logits must be [N, M, C] (M members or MC samples), got shape {z.shape}.")
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def bald_scores(logits):
  """BALD mutual information H[mean_m p_m] - mean_m H[p_m] from `logits [N, M, C]`.

  Needs M > 1 members or MC samples: with one member it is identically 0.
  """
  p = member_probs(logits)
  if p.shape[1] < 2:
    raise ValueError(
      f"BALD needs several ensemble members or MC samples, but logits have M={p.shape[1]} "
      "(shape [N, M, C]); use a method with M > 1, e.g. include 'methods/mc_dropout.gin', "
      "'methods/batchensemble.gin' or 'methods/shallow_ensemble.gin', or another strategy."
    )
  # Clip tiny negatives from round-off: mutual information is >= 0.
  return np.maximum(_entropy(p.mean(axis=1)) - _entropy(p).mean(axis=1), 0.0)


def density_scores(labelled_emb, labelled_labels, pool_emb, *, rcond=1e-10):
  """Low-density-first score of `pool_emb [N, D]` under an LDA fitted on the labelled set.

  Class means mu_k of `labelled_emb [L, D]` per label present, one shared maximum-likelihood
  covariance S = mean (z - mu_y)(z - mu_y)^T, pseudo-inverted (eigenvalues <= rcond x the
  largest dropped). l(z) = logsumexp_k(-(z - mu_k)^T S^+ (z - mu_k) / 2); score = max l - l.
  """
  train = np.asarray(labelled_emb, np.float64)
  labels = np.asarray(labelled_labels).reshape(-1)
  pool = np.asarray(pool_emb, np.float64)
  if train.ndim != 2 or pool.ndim != 2 or train.shape[1] != pool.shape[1]:
    raise ValueError(
      f"density needs embeddings [L, D] and [N, D] of one dimension D, got "
      f"{train.shape} and {pool.shape}."
    )
  if train.shape[0] != labels.shape[0] or train.shape[0] < 2:
    raise ValueError(
      f"density needs >= 2 labelled embeddings with one label each, got "
      f"{train.shape[0]} embeddings and {labels.shape[0]} labels."
    )
  origin = train.mean(axis=0)  # Smaller numbers, same distances.
  train, pool = train - origin, pool - origin
  classes, inverse = np.unique(labels, return_inverse=True)
  means = np.stack([train[inverse == k].mean(axis=0) for k in range(len(classes))])
  centred = train - means[inverse.reshape(-1)]
  eigs, vecs = np.linalg.eigh(centred.T @ centred / train.shape[0])
  keep = eigs > rcond * max(float(eigs[-1]), 0.0)
  whiten = vecs[:, keep] / np.sqrt(eigs[keep])  # W W^T = S^+
  zw, mw = pool @ whiten, means @ whiten
  sq = np.sum(zw * zw, axis=1, keepdims=True) - 2.0 * zw @ mw.T + np.sum(mw * mw, axis=1)[None]
  loglik = logsumexp(-np.maximum(sq, 0.0) / 2.0, axis=1)
  return loglik.max() - loglik


def uniform_scores(n, rng):
  """U(0, 1) scores: their top-k is a uniformly random k-subset."""
  return rng.uniform(size=n)


def compute_scores(strategy, outputs, *, rng=None, labelled=None, labelled_labels=None):
  """Scores of every example of a predicted pool.

  Args:
    strategy: one of `STRATEGIES`.
    outputs: the network's output dict over the pool (`logits [N, M, C]`, `probs [N, C]`,
      `embedding [N, D]`).
    rng: a `numpy.random.Generator` (uniform).
    labelled: positions (into the pool) of the labelled examples (density).
    labelled_labels: their labels (density).

  Returns:
    float64 `[N]`, higher = acquire first.
  """
  if strategy not in STRATEGIES:
    raise ValueError(
      f"Unknown acquisition strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}."
    )
  if strategy == "uniform":
    return uniform_scores(len(outputs["probs"]), rng)
  if strategy == "entropy":
    return entropy_scores(outputs["probs"])
  if strategy == "margin":
    return margin_scores(outputs["probs"])
  if strategy == "msp":
    return msp_scores(outputs["probs"])
  if strategy == "bald":
    return bald_scores(outputs["logits"])
  emb = np.asarray(outputs["embedding"])
  return density_scores(emb[np.asarray(labelled)], labelled_labels, emb)


def select(scores, k, *, exclude=(), noise="none", beta=0.0, rng=None):
  """Indices of the `k` examples to acquire, never one in `exclude`.

  Args:
    scores: `[N]` acquisition scores (higher first; non-negative for `power`).
    k: batch size.
    exclude: indices already labelled.
    noise: one of `NOISES`: "none" (top-k) or the Gumbel-perturbed key (module docstring).
    beta: Gumbel scale; 0 gives the top-k for every `noise`.
    rng: a `numpy.random.Generator` (needed when `beta > 0`).

  Returns:
    int64 `[k]`, in acquisition order (best first). Ties keep the lower index first.
  """
  if noise not in NOISES:
    raise ValueError(f"Unknown acquisition noise {noise!r}; choose one of {', '.join(NOISES)}.")
  if beta < 0:
    raise ValueError(f"Gumbel scale beta must be >= 0, got {beta}.")
  scores = np.asarray(scores, np.float64).reshape(-1)
  if not np.isfinite(scores).all():
    raise ValueError("Acquisition scores contain NaN or infinity; check the model outputs.")
  candidates = np.setdiff1d(np.arange(scores.shape[0]), np.asarray(exclude, np.int64))
  if k < 1 or k > len(candidates):
    raise ValueError(
      f"Cannot acquire {k} examples: the pool has {len(candidates)} unlabelled "
      f"ones left ({scores.shape[0]} in all, {scores.shape[0] - len(candidates)} "
      "labelled). Acquire fewer per round, run fewer rounds, or use a larger "
      "pool split."
    )
  s = scores[candidates]
  if noise == "power":
    if (s < 0).any():
      raise ValueError("Power acquisition needs non-negative scores (it takes their log).")
    key = np.log(np.maximum(s, _TINY))
  elif noise == "softrank":
    rank = np.empty(len(s))
    rank[np.argsort(-s, kind="stable")] = np.arange(1, len(s) + 1)
    key = -np.log(rank)
  else:
    key = s
  if noise != "none" and beta > 0:
    if rng is None:
      raise ValueError("Gumbel noise needs an rng (numpy.random.Generator).")
    key = key + beta * rng.gumbel(size=len(key))
  return candidates[np.argsort(-key, kind="stable")[:k]]


def initial_selection(labels, k, *, mode="balanced", rng):
  """The starting labelled set: `k` positions drawn at random, or class-balanced (k // C per
  class, the remainder to random classes) from `labels [N]` of the pool.
  """
  labels = np.asarray(labels).reshape(-1)
  if k < 1 or k > len(labels):
    raise ValueError(f"Cannot start with {k} labelled examples from a pool of {len(labels)}.")
  if mode == "random":
    return np.sort(rng.choice(len(labels), k, replace=False))
  if mode != "balanced":
    raise ValueError(f"Unknown initial selection {mode!r}; choose 'balanced' or 'random'.")
  classes = np.unique(labels)
  per = np.full(len(classes), k // len(classes))
  per[rng.choice(len(classes), k % len(classes), replace=False)] += 1
  chosen = []
  for c, n in zip(classes, per):
    members = np.flatnonzero(labels == c)
    if n > len(members):
      raise ValueError(
        f"Class-balanced start needs {n} examples of class {c}, the pool has "
        f"{len(members)}; start smaller or use initial_selection='random'."
      )
    chosen.append(rng.choice(members, n, replace=False))
  return np.sort(np.concatenate(chosen))
