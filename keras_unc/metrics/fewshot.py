"""Few-shot linear-regression accuracy on frozen embeddings (big_vision ``fewshot_lsr``).

Reference: big_vision ``evaluators/fewshot_lsr.py`` (Zhai, Kolesnikov, Beyer et
al.): whiten with the shots' mean/std, append a bias feature of 100, regress
``2 * onehot - 1`` with closed-form ridge through an eigendecomposition, predict
by argmax.  Shots are drawn per class from a seeded permutation.
"""

from __future__ import annotations

import numpy as np

from keras_unc.metrics.validation import check_embeddings, check_int, check_labels

__all__ = ["BIAS_CONSTANT", "fewshot_ridge_accuracy", "select_shots"]

#: Value of the appended bias feature: large, so the bias is almost unregularised.
BIAS_CONSTANT = 100.0


def select_shots(labels, shots, seed, num_classes=None) -> np.ndarray:
  """Indices of ``shots`` examples of every class, as big_vision draws them.

  With ``rng = np.random.default_rng(seed)``, class ``c = 0 .. num_classes-1``
  in turn takes the first ``shots`` entries of
  ``rng.permutation(np.where(labels == c)[0])``; the result concatenates the
  classes in order (length ``num_classes * shots``).

  Args:
      labels: ``[N]`` integer class ids.
      shots: examples per class (positive int).
      seed: seed of the permutation.
      num_classes: default ``max(labels) + 1``.

  Raises:
      ValueError: if a class has fewer than ``shots`` examples (big_vision
          would silently take fewer).
  """
  labels = check_labels(labels, None)
  shots = check_int(shots, "shots")
  if num_classes is None:
    num_classes = int(labels.max()) + 1
  elif labels.max() >= num_classes:
    raise ValueError(f"labels must be in [0, {num_classes}), found label {int(labels.max())}.")
  counts = np.bincount(labels, minlength=num_classes)
  short = np.flatnonzero(counts < shots)
  if short.size:
    raise ValueError(
      f"select_shots needs {shots} example(s) per class, but {short.size} class(es) "
      f"have fewer, e.g. class {int(short[0])} has {int(counts[short[0]])}."
    )
  rng = np.random.default_rng(seed)
  return np.concatenate(
    [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in range(num_classes)]
  )


def fewshot_ridge_accuracy(
  x_train, y_train, x_test, y_test, l2_reg=2.0**10, num_classes=None
) -> float:
  """Accuracy of a closed-form ridge regression classifier on embeddings.

  With ``mean``/``std`` the per-feature mean and (population) standard
  deviation of ``x_train``::

      X = [(x_train - mean) / (std + 1e-5), 100]       # bias column
      Y = 2 * onehot(y_train, num_classes) - 1
      W = (X^T X + l2_reg I)^{-1} X^T Y                 # N >= D + 1
        = X^T (X X^T + l2_reg I)^{-1} Y                 # N <  D + 1

  both through ``eigh`` of the smaller Gram matrix, as big_vision; the
  accuracy is ``mean(argmax(X_test W) == y_test)`` with ``X_test``
  standardised by the train statistics.  float64 throughout.

  Args:
      x_train, y_train: ``[N, D]`` shot embeddings and their labels.
      x_test, y_test: ``[M, D]`` evaluation embeddings and labels.
      l2_reg: ridge strength (big_vision default ``2**10``).
      num_classes: default ``max(y_train, y_test) + 1``.
  """
  y_train = check_labels(y_train, None, name="y_train")
  y_test = check_labels(y_test, None, name="y_test")
  x = check_embeddings(x_train, "x_train", n=y_train.shape[0])
  xt = check_embeddings(x_test, "x_test", n=y_test.shape[0])
  if xt.shape[1] != x.shape[1]:
    raise ValueError(f"x_test must have the train dimension {x.shape[1]}, got shape {xt.shape}.")
  if not l2_reg > 0:
    raise ValueError(f"l2_reg must be > 0, got {l2_reg!r}.")
  if num_classes is None:
    num_classes = int(max(y_train.max(), y_test.max())) + 1
  check_labels(y_train, None, num_classes, name="y_train")
  check_labels(y_test, None, num_classes, name="y_test")

  mean = x.mean(axis=0, keepdims=True)
  std = x.std(axis=0, keepdims=True) + 1e-5

  def design(z):
    z = (z - mean) / std
    return np.concatenate((z, np.full((z.shape[0], 1), BIAS_CONSTANT)), axis=1)

  x, xt = design(x), design(xt)
  y = 2.0 * np.eye(num_classes)[y_train] - 1.0
  n, d = x.shape
  if n >= d:
    eigs, q = np.linalg.eigh(x.T @ x)
    lhs, rhs = q, q.T @ (x.T @ y)
  else:
    eigs, q = np.linalg.eigh(x @ x.T)
    lhs, rhs = x.T @ q, q.T @ y
  w = (lhs / (eigs + l2_reg)) @ rhs
  return float(np.mean(np.argmax(xt @ w, axis=1) == y_test))
