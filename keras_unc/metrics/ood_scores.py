"""Exact NumPy out-of-distribution scores and epistemic scores (higher = more OOD).

Every function returns a float64 ``[N]`` array. Scores that use logits accept ``[N, C]`` or
``[N, M, C]`` (``M`` ensemble members or MC samples); output-only scores average the logits
over the members first (as `max_logit_score`), the epistemic scores (`mutual_information`,
`variation_ratio`) need ``M > 1``. Scores that fit statistics on in-distribution training
embeddings come as a ``*_fit`` function returning the statistics and a ``*_scores`` function
applying them.

Scores: energy (Liu et al. 2020), GEN (Liu, Lochman & Zach 2023), ViM (Wang et al. 2022),
kNN (Sun et al. 2022), ReAct (Sun, Guo & Li 2021), BALD mutual information (Houlsby et al.
2011; Gal et al. 2017) and the variation ratio (Freeman 1965; Gal 2016).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from keras_unc.metrics.validation import (
  _check_finite,
  check_embeddings,
  check_int,
  check_logits,
  check_probs,
)

__all__ = [
  "ViMFit",
  "energy_score",
  "gen_score",
  "knn_fit",
  "knn_scores",
  "mutual_information",
  "react_fit",
  "react_scores",
  "variation_ratio",
  "vim_default_dim",
  "vim_fit",
  "vim_scores",
]

_CHUNK = 4096


def _mean_logits(logits):
  logits = check_logits(logits)
  return logits.mean(axis=1) if logits.ndim == 3 else logits


def _logsumexp(z):
  top = z.max(axis=-1, keepdims=True)
  return np.log(np.sum(np.exp(z - top), axis=-1)) + top[..., 0]


def _positive(value, name):
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise ValueError(f"{name} must be a positive number, got {value!r}.")
  if not value > 0 or not np.isfinite(value):
    raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
  return float(value)


def _head(weight, bias, dim):
  """Validate a linear head ``(W [D, C], b [C])`` against the embedding dimension."""
  weight = check_embeddings(weight, "weight")
  bias = np.asarray(bias, dtype=np.float64)
  if weight.shape[0] != dim:
    raise ValueError(
      f"The linear head's weight must be [D, C] with D = {dim} (the embedding dimension), "
      f"got shape {weight.shape}."
    )
  if bias.shape != (weight.shape[1],):
    raise ValueError(f"bias must have shape ({weight.shape[1]},), got {bias.shape}.")
  _check_finite(bias, "bias")
  return weight, bias


def energy_score(logits, temperature: float = 1.0) -> np.ndarray:
  """Energy score ``E(x) = -T logsumexp(z / T)`` (higher = more OOD).

  Liu, Wang, Owens & Li (2020), "Energy-based Out-of-distribution Detection", NeurIPS:
  the free energy of the logits ``z``; the paper's detector uses ``T = 1``. Member-averaged
  logits when ``logits`` is ``[N, M, C]``.

  Args:
    logits: ``[N, C]`` or ``[N, M, C]``.
    temperature: ``T > 0`` (default 1, the paper's).
  """
  t = _positive(temperature, "temperature")
  return -t * _logsumexp(_mean_logits(logits) / t)


def gen_score(probs, gamma: float = 0.1, top_m: int = 100) -> np.ndarray:
  """Generalised-entropy (GEN) score ``G(p) = sum_{top-M p_j} p_j^gamma (1 - p_j)^gamma``.

  Liu, Lochman & Zach (2023), "GEN: Pushing the Limits of Softmax-Based Out-of-Distribution
  Detection", CVPR (eq. 6; the reference code returns ``-G`` as an in-distribution score).
  The sum runs over the ``min(M, C)`` largest probabilities. Paper defaults ``gamma = 0.1``
  and ``M = 100``.

  Args:
    probs: predictive probabilities ``[N, C]``.
    gamma: ``0 < gamma < 1`` (default 0.1).
    top_m: number of largest probabilities summed (default 100; clipped to ``C``).
  """
  probs = check_probs(probs)
  gamma = _positive(gamma, "gamma")
  top_m = check_int(top_m, "top_m")
  top = -np.partition(-probs, min(top_m, probs.shape[1]) - 1, axis=1)[
    :, : min(top_m, probs.shape[1])
  ]
  return np.sum(top**gamma * np.maximum(1.0 - top, 0.0) ** gamma, axis=1)


def _member_probs(logits, score):
  logits = check_logits(logits)
  if logits.ndim != 3 or logits.shape[1] < 2:
    raise ValueError(
      f"The {score} score needs logits [N, M, C] of M > 1 members or MC samples, got shape "
      f"{logits.shape}: use a multi-member or MC method (an ensemble, BatchEnsemble, MC "
      "dropout, ...) or another score."
    )
  return logits


def _entropy(p, axis=-1):
  return -np.sum(p * np.log(np.where(p > 0, p, 1.0)), axis=axis)


def mutual_information(logits) -> np.ndarray:
  """BALD mutual information ``I = H[mean_m p_m] - mean_m H[p_m]`` (nats).

  Houlsby et al. (2011), "Bayesian Active Learning for Classification and Preference
  Learning"; Gal, Islam & Ghahramani (2017), "Deep Bayesian Active Learning with Image
  Data", ICML. ``p_m = softmax(z_m)`` per member or MC sample; the epistemic part of the
  predictive entropy. No hyperparameters.

  Args:
    logits: ``[N, M, C]`` with ``M > 1`` (else a ValueError).
  """
  z = _member_probs(logits, "mutual_information")
  p = np.exp(z - z.max(axis=-1, keepdims=True))
  p /= p.sum(axis=-1, keepdims=True)
  return np.maximum(_entropy(p.mean(axis=1)) - _entropy(p).mean(axis=1), 0.0)


def variation_ratio(logits) -> np.ndarray:
  """Variation ratio ``1 - (members voting for the modal class) / M``.

  Freeman (1965), "Elementary Applied Statistics"; Gal (2016), "Uncertainty in Deep
  Learning" (PhD thesis, sec. 3.3.1). Each member or MC sample votes for its argmax class
  (first index on ties). No hyperparameters.

  Args:
    logits: ``[N, M, C]`` with ``M > 1`` (else a ValueError).
  """
  z = _member_probs(logits, "variation_ratio")
  votes = z.argmax(axis=-1)
  counts = np.zeros((z.shape[0], z.shape[2]))
  np.add.at(counts, (np.arange(z.shape[0])[:, None], votes), 1.0)
  return 1.0 - counts.max(axis=1) / z.shape[1]


class ViMFit(NamedTuple):
  """ViM statistics: the origin ``u [D]``, the residual basis ``[D, D - D_p]``, ``alpha``."""

  origin: np.ndarray
  residual_basis: np.ndarray
  alpha: float


def vim_default_dim(feature_dim: int) -> int:
  """The principal-subspace dimension ``D_p`` of ViM's reference code by feature dimension.

  ``1000`` for ``D >= 2048``, ``512`` for ``D >= 768`` (haoqiwang/vim ``benchmark.py``);
  ``D // 2`` below (OpenOOD's choice for CIFAR ResNet-18, ``D = 512 -> 256``).
  """
  if feature_dim >= 2048:
    return 1000
  if feature_dim >= 768:
    return 512
  return feature_dim // 2


def vim_fit(train_emb, weight, bias, dim: int | None = None) -> ViMFit:
  """Fit ViM (Wang, Li, Feng & Zhang 2022, "ViM: Out-Of-Distribution with Virtual-logit
  Matching", CVPR) on in-distribution training features.

  As the reference code: origin ``u = -pinv(W^T) b`` (the point whose logits are 0);
  principal subspace P = the ``D_p`` leading eigenvectors of
  ``Sigma = (1/N) sum_i (x_i - u)(x_i - u)^T``; the residual basis spans its orthogonal
  complement; ``alpha = mean_i max_c z_ic / mean_i ||x_i^{P-perp}||`` on the training set.

  Args:
    train_emb: ``[N, D]`` training features (the input of the linear head).
    weight, bias: the head, ``logits = x @ weight + bias`` (``[D, C]``, ``[C]``).
    dim: ``D_p``; None: `vim_default_dim(D)`. Must be ``< D``.
  """
  x = check_embeddings(train_emb, "train_emb")
  weight, bias = _head(weight, bias, x.shape[1])
  dim = vim_default_dim(x.shape[1]) if dim is None else check_int(dim, "dim")
  if not 0 < dim < x.shape[1]:
    raise ValueError(
      f"ViM's principal dimension must be in [1, D - 1] = [1, {x.shape[1] - 1}] for D = "
      f"{x.shape[1]}-dimensional features, got dim={dim}: pass a smaller `dim`."
    )
  origin = -np.linalg.pinv(weight.T) @ bias
  centred = x - origin
  eigs, vecs = np.linalg.eigh(centred.T @ centred / x.shape[0])
  basis = vecs[:, np.argsort(-eigs, kind="stable")[dim:]]
  residual = np.linalg.norm(centred @ basis, axis=1)
  mean_residual = residual.mean()
  if not mean_residual > 0:
    raise ValueError(
      "ViM: the training features have no component off the principal subspace (residual "
      "norm 0): pass a smaller `dim`."
    )
  alpha = float((x @ weight + bias).max(axis=1).mean() / mean_residual)
  return ViMFit(origin, basis, alpha)


def vim_scores(fit: ViMFit, emb, weight, bias) -> np.ndarray:
  """ViM score ``alpha ||x^{P-perp}|| - logsumexp(z)`` with ``z = x @ W + b``.

  The paper's OOD probability is the virtual logit's softmax probability
  ``exp(v) / (exp(v) + sum_c exp(z_c))`` with ``v = alpha ||x^{P-perp}||``; its logit is
  ``v - logsumexp(z)``, this score (a strictly monotone transform, so every ranking metric
  is the same; the reference code returns its negative).

  Args:
    fit: `vim_fit`'s statistics.
    emb: ``[N, D]`` features.
    weight, bias: the head (as `vim_fit`).
  """
  x = check_embeddings(emb, "emb")
  weight, bias = _head(weight, bias, x.shape[1])
  if fit.origin.shape[0] != x.shape[1]:
    raise ValueError(f"emb must be {fit.origin.shape[0]}-dimensional, got shape {x.shape}.")
  virtual = fit.alpha * np.linalg.norm((x - fit.origin) @ fit.residual_basis, axis=1)
  return virtual - _logsumexp(x @ weight + bias)


def _normalise(x):
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_fit(train_emb, bank_size: int | None = None, seed: int = 0) -> np.ndarray:
  """The kNN detector's bank (Sun, Ming, Zhu & Li 2022, "Out-of-Distribution Detection
  with Deep Nearest Neighbors", ICML): L2-normalised training embeddings, a uniform random
  subsample of ``bank_size`` of them without replacement (the paper's sampling ratio;
  seeded) or all of them (None, or ``bank_size >= N``).

  Returns:
    float64 ``[min(bank_size, N), D]`` unit vectors.
  """
  x = check_embeddings(train_emb, "train_emb")
  if bank_size is not None:
    bank_size = check_int(bank_size, "bank_size")
    if bank_size < x.shape[0]:
      keep = np.random.default_rng(seed).choice(x.shape[0], bank_size, replace=False)
      x = x[np.sort(keep)]
  return _normalise(x)


def knn_scores(bank, emb, k: int = 50) -> np.ndarray:
  """KNN score: Euclidean distance from the normalised embedding to its k-th nearest
  neighbour in the bank (`knn_fit`), ``||z/||z|| - b_(k)||``.

  Sun et al. (2022) use ``k = 50`` on CIFAR-10 (1000 on ImageNet with 1% of the training
  set); ``k`` is clipped to the bank size. The reference code (faiss ``IndexFlatL2``) ranks
  by the squared distance, a monotone transform of this one.

  Args:
    bank: ``[B, D]`` unit vectors.
    emb: ``[N, D]`` embeddings (normalised here).
    k: the neighbour rank (default 50).
  """
  bank = check_embeddings(bank, "bank")
  z = check_embeddings(emb, "emb")
  if z.shape[1] != bank.shape[1]:
    raise ValueError(f"emb must be {bank.shape[1]}-dimensional, got shape {z.shape}.")
  k = min(check_int(k, "k"), bank.shape[0])
  z = _normalise(z)
  b_sq = np.sum(bank * bank, axis=1)
  out = np.empty(z.shape[0])
  for s in range(0, z.shape[0], _CHUNK):
    zz = z[s : s + _CHUNK]
    d = np.sum(zz * zz, axis=1, keepdims=True) - 2.0 * zz @ bank.T + b_sq
    out[s : s + _CHUNK] = np.partition(d, k - 1, axis=1)[:, k - 1]
  return np.sqrt(np.maximum(out, 0.0))


def react_fit(train_emb, percentile: float = 90.0) -> float:
  """ReAct's clipping value ``c``: the ``percentile``-th percentile of all training
  activations (every unit of every example). Sun, Guo & Li (2021), "ReAct: Out-of-
  distribution Detection With Rectified Activations", NeurIPS; paper default ``p = 90``.
  """
  x = check_embeddings(train_emb, "train_emb")
  if isinstance(percentile, bool) or not 0.0 <= float(percentile) <= 100.0:
    raise ValueError(f"percentile must be in [0, 100], got {percentile!r}.")
  return float(np.percentile(x, float(percentile)))


def react_scores(emb, weight, bias, clip: float, temperature: float = 1.0) -> np.ndarray:
  """ReAct score: the energy (`energy_score`) of the logits of clipped features,
  ``-T logsumexp((min(x, c) @ W + b) / T)``, ``c`` from `react_fit`.
  """
  x = check_embeddings(emb, "emb")
  weight, bias = _head(weight, bias, x.shape[1])
  return energy_score(np.minimum(x, clip) @ weight + bias, temperature)
