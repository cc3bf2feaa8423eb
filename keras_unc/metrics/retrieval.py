"""Retrieval metrics of the URL benchmark: Recall@1 and R-AUROC.

Reference: Kirchhof, Mucsanyi, Oh & Kasneci (2023), "URL: A Representation
Learning Benchmark for Transferable Uncertainty Estimates", NeurIPS Datasets and
Benchmarks (R@1, and R-AUROC = ``auroc_correct``).
"""

from __future__ import annotations

import numpy as np

from keras_unc.metrics.ranking import auroc
from keras_unc.metrics.validation import check_embeddings, check_int, check_scores

__all__ = ["r_auroc", "recall_at_one"]


def _check_retrieval(embeddings, labels):
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D with shape [N], got shape {labels.shape}.")
  x = check_embeddings(embeddings, n=labels.shape[0])
  if x.shape[0] < 2:
    raise ValueError(
      f"recall@1 needs at least 2 examples (a neighbour other than the query), got {x.shape[0]}."
    )
  return x, labels


def _nearest_neighbours(x, chunk_size):
  """Index of the max-inner-product neighbour of every row, itself excluded.

  Blocks of ``chunk_size`` queries x ``chunk_size`` candidates, so memory is
  ``O(chunk_size^2)`` whatever ``N``.  Ties go to the lowest index.
  """
  n = x.shape[0]
  nn = np.empty(n, dtype=np.int64)
  for qs in range(0, n, chunk_size):
    q = x[qs : qs + chunk_size]
    rows = np.arange(q.shape[0])
    best = np.full(q.shape[0], -np.inf)
    best_idx = np.zeros(q.shape[0], dtype=np.int64)
    for cs in range(0, n, chunk_size):
      sim = q @ x[cs : cs + chunk_size].T
      # Exclude the query itself: global index qs + r == cs + c.
      self_cols = qs + rows - cs
      hit = (self_cols >= 0) & (self_cols < sim.shape[1])
      sim[rows[hit], self_cols[hit]] = -np.inf
      j = sim.argmax(axis=1)
      v = sim[rows, j]
      better = v > best  # Strict: an earlier chunk wins ties.
      best[better] = v[better]
      best_idx[better] = cs + j[better]
    nn[qs : qs + chunk_size] = best_idx
  return nn


def recall_at_one(embeddings, labels, chunk_size=2048):
  """Recall@1: does the nearest neighbour share the query's label?

  Embeddings are L2-normalised (zero vectors stay zero: norms are clipped at
  1e-12); the neighbour maximises the inner product (cosine similarity) over
  all *other* examples, ties to the lowest index.  Computed in float64 in
  ``chunk_size x chunk_size`` blocks: no ``N x N`` matrix, ``O(N^2 D)`` time.

  Args:
      embeddings: ``[N, D]`` finite embeddings, ``N >= 2``.
      labels: ``[N]`` class ids (any comparable values).
      chunk_size: block size of the similarity computation.

  Returns:
      ``(r_at_1, correct)``: the mean as a Python float and the per-example
      bool ``[N]`` mask.
  """
  chunk_size = check_int(chunk_size, "chunk_size")
  x, labels = _check_retrieval(embeddings, labels)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  nn = _nearest_neighbours(x, chunk_size)
  correct = labels[nn] == labels
  return float(correct.mean()), correct


def r_auroc(embeddings, labels, uncertainty, chunk_size=2048) -> float:
  """R-AUROC (URL ``auroc_correct``): does low uncertainty predict R@1 success?

  AUROC with positive = R@1-correct example (:func:`recall_at_one`) and score
  = ``-uncertainty``.

  Raises:
      ValueError: if all (or no) examples are R@1-correct (AUROC undefined),
          or on invalid inputs.
  """
  n = np.asarray(labels).shape[0] if np.ndim(labels) else None
  uncertainty = check_scores(uncertainty, "uncertainty", n=n)  # Before the O(N^2) part.
  _, correct = recall_at_one(embeddings, labels, chunk_size)
  return auroc(-uncertainty, correct)
