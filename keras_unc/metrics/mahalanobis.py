"""Mahalanobis-distance OOD scores on embeddings (higher = more OOD).

Fitted on in-distribution *train* embeddings: one mean ``mu_k`` per class
present in ``train_labels`` and one covariance shared by all classes,
``Sigma = (1/N) sum_i (z_i - mu_{y_i})(z_i - mu_{y_i})^T`` (maximum likelihood,
as Lee et al. 2018).  The inverse is a pseudo-inverse from the eigendecomposition
of ``Sigma``: eigenvalues ``<= rcond * max eigenvalue`` (default ``1e-10``) are
dropped, i.e. ``np.linalg.pinv(Sigma, rcond=rcond, hermitian=True)``, so
rank-deficient covariances (``D > N``, constant features) work.
Distances are squared: ``d_k(z) = (z - mu_k)^T Sigma^+ (z - mu_k)``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from keras_unc.metrics.validation import check_embeddings, check_labels

__all__ = ["MahalanobisFit", "mahalanobis_fit", "mahalanobis_score", "mahalanobis_scores"]

_CHUNK = 4096


def _whitener(centered, rcond):
  """``L`` with ``L L^T = pinv(cov)``, for ``cov = centered^T centered / N``."""
  cov = centered.T @ centered / centered.shape[0]
  eigs, vecs = np.linalg.eigh(cov)
  keep = eigs > rcond * max(float(eigs[-1]), 0.0)
  return vecs[:, keep] / np.sqrt(eigs[keep])


def _min_sq_dist(z, centers):
  """``min_k ||z - c_k||^2`` row-wise, chunked over rows of ``z``."""
  c_sq = np.sum(centers * centers, axis=1)
  out = np.empty(z.shape[0])
  for s in range(0, z.shape[0], _CHUNK):
    zz = z[s : s + _CHUNK]
    d = np.sum(zz * zz, axis=1, keepdims=True) - 2.0 * zz @ centers.T + c_sq
    out[s : s + _CHUNK] = np.maximum(d.min(axis=1), 0.0)
  return out


class MahalanobisFit(NamedTuple):
  """Fitted Mahalanobis statistics (all float64).

  Attributes:
    origin: ``[D]`` the mean of the train embeddings (subtracted first; distances do not
      change).
    whitener: ``[D, R]`` ``L`` with ``L L^T = Sigma^+`` (shared class covariance).
    means: ``[K, R]`` the class means, centred and whitened (``(mu_k - origin) @ L``).
    whitener0: ``[D, R0]`` the class-agnostic whitener (relative distance), or None.
  """

  origin: np.ndarray
  whitener: np.ndarray
  means: np.ndarray
  whitener0: np.ndarray | None


def mahalanobis_fit(train_emb, train_labels, *, relative=True, rcond=1e-10) -> MahalanobisFit:
  """Class means and shared-covariance whitener of ``train_emb`` (module docstring).

  Args:
      train_emb: ``[N, D]`` in-distribution train embeddings.
      train_labels: ``[N]`` integer class ids (any non-negative ints).
      relative: also fit the class-agnostic Gaussian of the relative distance.
      rcond: relative eigenvalue cut-off of the pseudo-inverse.
  """
  train_labels = check_labels(train_labels, None)
  train = check_embeddings(train_emb, "train_emb", n=train_labels.shape[0])
  # Work around the global train mean: smaller numbers, same distances.
  origin = train.mean(axis=0)
  train = train - origin
  _, inverse = np.unique(train_labels, return_inverse=True)
  inverse = inverse.reshape(-1)
  counts = np.bincount(inverse)
  order = np.argsort(inverse, kind="stable")
  starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
  means = np.add.reduceat(train[order], starts, axis=0) / counts[:, None]
  w = _whitener(train - means[inverse], rcond)
  w0 = _whitener(train, rcond) if relative else None  # Mean of `train` is 0 after centring.
  return MahalanobisFit(origin, w, means @ w, w0)


def mahalanobis_score(fit: MahalanobisFit, test_emb, relative=False) -> np.ndarray:
  """Per-example (relative) Mahalanobis score of ``test_emb`` under a `mahalanobis_fit`.

  Returns:
      float64 ``[M]`` scores (as `mahalanobis_scores`).
  """
  test = check_embeddings(test_emb, "test_emb")
  if test.shape[1] != fit.origin.shape[0]:
    raise ValueError(
      f"test_emb must have the train dimension {fit.origin.shape[0]}, got shape {test.shape}."
    )
  test = test - fit.origin
  scores = _min_sq_dist(test @ fit.whitener, fit.means)
  if relative:
    if fit.whitener0 is None:
      raise ValueError("The relative Mahalanobis score needs mahalanobis_fit(..., relative=True).")
    zw = test @ fit.whitener0
    scores = scores - np.sum(zw * zw, axis=1)
  return scores


def mahalanobis_scores(train_emb, train_labels, test_emb, relative=False, *, rcond=1e-10):
  """Per-example Mahalanobis OOD score of ``test_emb``.

  ``score(z) = min_k d_k(z)`` over the classes of the train set (module
  docstring).  With ``relative=True`` the relative Mahalanobis distance of
  Ren et al. (2021): ``min_k d_k(z) - d_0(z)``, where ``d_0`` is the squared
  distance under one class-agnostic Gaussian (mean and covariance of all train
  embeddings); ``d_0`` does not depend on ``k``, so this equals
  ``min_k (d_k - d_0)``.

  Args:
      train_emb: ``[N, D]`` in-distribution train embeddings.
      train_labels: ``[N]`` integer class ids (any non-negative ints).
      test_emb: ``[M, D]`` embeddings to score.
      relative: subtract the class-agnostic distance.
      rcond: relative eigenvalue cut-off of the pseudo-inverse.

  Returns:
      float64 ``[M]`` scores.

  References: Lee et al. (2018), "A Simple Unified Framework for Detecting
  Out-of-Distribution Samples and Adversarial Attacks", NeurIPS; Ren et al.
  (2021), "A Simple Fix to Mahalanobis Distance for Improving Near-OOD
  Detection", arXiv:2106.09022.
  """
  fit = mahalanobis_fit(train_emb, train_labels, relative=relative, rcond=rcond)
  return mahalanobis_score(fit, test_emb, relative=relative)
