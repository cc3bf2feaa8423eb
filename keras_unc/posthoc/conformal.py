"""Split-conformal prediction sets for classification: THR (LAC), APS and RAPS.

On n held-out calibration examples with scores `s_i = s(x_i, y_i)`, `q_hat` is the
`ceil((n + 1)(1 - alpha))`-th smallest score, and the set of a new input is
`C(x) = {y : s(x, y) <= q_hat}`; for exchangeable data `P(y in C(x)) >= 1 - alpha`. `fit`
refuses a calibration split too small for the level (`ceil((n + 1)(1 - alpha)) > n`).

The scores read `outputs["probs"]`: the calibrated predictive when a calibrator ran first
(`keras_unc.posthoc.state.ORDER`). `apply` returns `{"prediction_set": bool [N, C],
"set_size": int32 [N]}`.

Ties. APS and RAPS rank labels by probability. Here labels of equal probability share the
rank of the last of them: the mass "at or above" y is `sum_j p_j 1[p_j >= p_y]` and
`rank(y) = #{j : p_j >= p_y}`. With distinct probabilities this is the sorted-order
definition; with ties (frequent after isotonic calibration) the score does not depend on how
a sort breaks them, so tied labels enter a set together, and NumPy and the Keras layer agree.

References: Vovk, Gammerman & Shafer, "Algorithmic Learning in a Random World", 2005;
Angelopoulos & Bates, "A Gentle Introduction to Conformal Prediction and Distribution-Free
Uncertainty Quantification", 2021; Sadinle, Lei & Wasserman, "Least Ambiguous Set-Valued
Classifiers with Bounded Error Levels", JASA 2019 (THR/LAC); Romano, Sesia & Candès,
"Classification with Valid and Adaptive Coverage", NeurIPS 2020 (APS); Angelopoulos, Bates,
Malik & Jordan, "Uncertainty Sets for Image Classifiers using Conformal Prediction", ICLR
2021 (RAPS).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from keras_unc.metrics import validation
from keras_unc.posthoc import base
from keras_unc.posthoc.base import Component, FitData, register

METHODS = ("thr", "aps", "raps")
_ROUND = 1e-9  # (n + 1)(1 - alpha) is rounded to this before ceil: 10 * 0.9 is 9, not 10.


def quantile_index(n, alpha):
  """`k = ceil((n + 1)(1 - alpha))`: q_hat is the k-th smallest of n calibration scores."""
  return math.ceil((n + 1) * (1.0 - alpha) - _ROUND)


def min_calibration_size(alpha):
  """The smallest n with `ceil((n + 1)(1 - alpha)) <= n`, i.e. `n >= (1 - alpha) / alpha`."""
  return max(1, math.ceil((1.0 - alpha) / alpha - _ROUND))


def conformal_quantile(scores, alpha):
  """`q_hat`: the `ceil((n + 1)(1 - alpha))`-th smallest score (ValueError if n is too small)."""
  scores = np.sort(np.asarray(scores, np.float64))
  n = len(scores)
  k = quantile_index(n, alpha)
  if k > n:
    raise ValueError(
      f"Split conformal at alpha={alpha} needs ceil((n + 1)(1 - alpha)) <= n, i.e. at least "
      f"{min_calibration_size(alpha)} calibration examples, but got n={n}: use a larger "
      "calibration split or a larger alpha."
    )
  return float(scores[k - 1])


def _check_alpha(alpha):
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
    raise ValueError(f"alpha (the miscoverage level) must be in (0, 1), e.g. 0.1, got {alpha!r}.")
  return float(alpha)


def _check_bool(value, name):
  if not isinstance(value, bool):
    raise ValueError(f"{name} must be True or False, got {value!r}.")
  return value


# --- Scores in NumPy ---------------------------------------------------------------------------


def mass_and_rank(probs):
  """Per label: mass at or above it `sum_j p_j 1[p_j >= p_y]` and `rank = #{j : p_j >= p_y}`
  (ties share the rank of the last of them), both `[N, C]`, computed by sorting.
  """
  probs = np.asarray(probs, np.float64)
  n, c = probs.shape
  order = np.argsort(-probs, axis=1, kind="stable")
  v = np.take_along_axis(probs, order, axis=1)  # Descending.
  cum = np.cumsum(v, axis=1)
  is_end = np.ones((n, c), bool)
  is_end[:, :-1] = v[:, :-1] != v[:, 1:]
  # Sorted position -> last position of its tie group (the first group end at or after it).
  pos = np.broadcast_to(np.arange(c), (n, c))
  ends = np.sort(np.where(is_end, pos, c + pos), axis=1)
  starts = np.ones((n, c), np.int64)
  starts[:, 1:] = is_end[:, :-1]
  group = np.cumsum(starts, axis=1) - 1
  end = np.take_along_axis(ends, group, axis=1)
  mass_sorted, rank_sorted = np.take_along_axis(cum, end, axis=1), end + 1
  inverse = np.argsort(order, axis=1)
  return np.take_along_axis(mass_sorted, inverse, 1), np.take_along_axis(rank_sorted, inverse, 1)


def label_scores(probs, method, u=None, lam=0.0, k_reg=0):
  """Conformity scores `[N, C]` of every label (`u [N]`: the randomisation, or None)."""
  probs = np.asarray(probs, np.float64)
  if method == "thr":
    return 1.0 - probs
  mass, rank = mass_and_rank(probs)
  scores = mass if u is None else mass - u[:, None] * probs
  if method == "raps":
    scores = scores + lam * np.maximum(0, rank - k_reg)
  return scores


# --- Components --------------------------------------------------------------------------------


class _Conformal(Component):
  """Split-conformal sets; subclasses set `method` and their hyperparameters."""

  method = "thr"

  def __init__(self, alpha: float = 0.1):
    self.alpha = _check_alpha(alpha)

  def get_config(self):
    return {"alpha": self.alpha}

  # Randomisation (APS/RAPS only).
  randomized = False
  allow_empty = True
  lam = 0.0
  k_reg = 0
  seed = 0

  def _u(self, n, stream):
    if not self.randomized:
      return None
    return np.random.default_rng((self.seed, stream)).random(n)

  def _scores(self, probs, u):
    return label_scores(probs, self.method, u, self.lam, self.k_reg)

  def fit(self, data):
    if not isinstance(data, FitData):
      raise ValueError(f"fit takes a posthoc.FitData, got {type(data).__name__}.")
    probs = base.probs_of(data.outputs, None, "FitData.outputs")
    labels = validation.check_labels(data.labels, probs.shape[0], probs.shape[1])
    n = len(labels)
    scores = self._scores(probs, self._u(n, 0))[np.arange(n), labels]
    self.q_hat = conformal_quantile(scores, self.alpha)
    self.num_examples, self.num_classes = n, probs.shape[1]
    self._fitted = True
    return self

  def state(self):
    self._check_fitted()
    return {
      "q_hat": np.asarray(self.q_hat, np.float64),
      "num_examples": np.asarray(self.num_examples, np.int64),
      "num_classes": np.asarray(self.num_classes, np.int64),
    }

  def load_state(self, arrays):
    missing = sorted({"q_hat", "num_examples", "num_classes"} - set(arrays))
    if missing:
      raise ValueError(
        f"The state of the conformal predictor {self.name!r} lacks {missing}: it was saved "
        "by another component or version; run calibrate again."
      )
    q_hat = float(np.asarray(arrays["q_hat"]))
    if not np.isfinite(q_hat):
      raise ValueError(f"q_hat in the state must be finite, got {q_hat}.")
    self.q_hat = q_hat
    self.num_examples = int(np.asarray(arrays["num_examples"]))
    self.num_classes = int(np.asarray(arrays["num_classes"]))
    self._fitted = True
    return self

  def apply(self, outputs):
    self._check_fitted()
    probs = base.probs_of(outputs, self.num_classes, "outputs")
    scores = self._scores(probs, self._u(len(probs), 1))
    sets = scores <= self.q_hat
    if not self.allow_empty:
      empty = ~sets.any(axis=1)
      sets |= empty[:, None] & (probs == probs.max(axis=1, keepdims=True))
    return {"prediction_set": sets, "set_size": sets.sum(axis=1).astype(np.int32)}

  def layer(self):
    self._check_fitted()
    return ConformalSets(
      method=self.method,
      q_hat=self.q_hat,
      lam=self.lam,
      k_reg=self.k_reg,
      randomized=self.randomized,
      allow_empty=self.allow_empty,
      seed=self.seed,
    )


@register("conformal", "thr")
class ThrConformal(_Conformal):
  """THR / LAC sets: score `1 - p_y`, set `{y : p_y >= 1 - q_hat}` (can be empty: the least
  ambiguous sets with the coverage guarantee).

  Args:
    alpha: miscoverage level in (0, 1) (target coverage 1 - alpha).

  Reference: Sadinle, Lei & Wasserman, "Least Ambiguous Set-Valued Classifiers with Bounded
  Error Levels", JASA 2019.
  """

  method = "thr"


@register("conformal", "aps")
class APSConformal(_Conformal):
  """Adaptive prediction sets: score(y) = probability mass of the labels ranked at or above y
  (`sum_j p_j 1[p_j >= p_y]`), minus `U * p_y` when randomized (`U ~ Uniform[0, 1)`, one draw
  per example shared by its labels); the set holds the labels with score <= q_hat.

  Args:
    alpha: miscoverage level in (0, 1).
    randomized: randomised scores (coverage close to exactly 1 - alpha, smaller sets) or
      not (coverage >= 1 - alpha, conservative).
    allow_empty: keep empty sets; if False (default) an empty set becomes the top-1 label
      (all labels tied at the maximum), which can only raise coverage.
    seed: NumPy seed of `U` in `fit` and `apply` (`apply` draws the same `U` for the same
      number of examples). The Keras layer draws `U` with `keras.random` per call, so
      served randomized sets are not reproducible; non-randomized ones are.

  Reference: Romano, Sesia & Candès, "Classification with Valid and Adaptive Coverage",
  NeurIPS 2020.
  """

  method = "aps"

  def __init__(
    self,
    alpha: float = 0.1,
    randomized: bool = False,
    allow_empty: bool = False,
    seed: int = 0,
  ):
    super().__init__(alpha)
    self.randomized = _check_bool(randomized, "randomized")
    self.allow_empty = _check_bool(allow_empty, "allow_empty")
    self.seed = validation.check_int(seed, "seed", minimum=0)

  def get_config(self):
    return {
      **super().get_config(),
      "randomized": self.randomized,
      "allow_empty": self.allow_empty,
      "seed": self.seed,
    }


@register("conformal", "raps")
class RAPSConformal(APSConformal):
  """Regularized adaptive prediction sets: the APS score plus `lam * max(0, rank(y) - k_reg)`
  (rank 1-based, `#{j : p_j >= p_y}`), which penalises long tails of small probabilities.

  Follows the paper's definition (eq. 4-5: `rho_x(y) + u * p_y + lam (o_x(y) - k_reg)^+` with
  rho the mass strictly above y, i.e. our mass at or above y minus `(1 - u) p_y`; `1 - u` is
  our `U`). It differs from the authors' code (aangelopoulos/conformal_classification) in:
  (1) their non-randomized sets also take the first label whose cumulative score exceeds
  q_hat (`sizes = #(cumsum <= tau) + 1`), a conservative variant; ours are exactly
  `{y : score <= q_hat}`, the set the calibration scores certify; (2) their randomisation
  also scales the penalty increment (`U * (p + lam 1[rank > k_reg])`), the paper's only p_y;
  (3) they take `q_hat` as `np.quantile(scores, 1 - alpha, "higher")`, without the
  `(n + 1)` finite-sample correction, and fit a temperature inside (here: a calibrator
  component); (4) ties share a rank (module doc).

  Args:
    alpha: miscoverage level in (0, 1).
    lam: penalty per rank beyond k_reg (>= 0; 0 gives APS).
    k_reg: ranks without penalty (>= 0).
    randomized, allow_empty, seed: as `APSConformal`.

  Reference: Angelopoulos, Bates, Malik & Jordan, "Uncertainty Sets for Image Classifiers
  using Conformal Prediction", ICLR 2021.
  """

  method = "raps"

  def __init__(
    self,
    alpha: float = 0.1,
    lam: float = 0.01,
    k_reg: int = 5,
    randomized: bool = False,
    allow_empty: bool = False,
    seed: int = 0,
  ):
    super().__init__(alpha, randomized=randomized, allow_empty=allow_empty, seed=seed)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0:
      raise ValueError(f"lam must be a number >= 0, got {lam!r}.")
    self.lam = float(lam)
    self.k_reg = validation.check_int(k_reg, "k_reg", minimum=0)

  def get_config(self):
    return {**super().get_config(), "lam": self.lam, "k_reg": self.k_reg}


# --- Keras layer -------------------------------------------------------------------------------


def _mass_and_rank_ops(probs):
  """`mass_and_rank` in keras.ops (same tie rule, independent of the sort's tie-break)."""
  c = probs.shape[-1]
  order = ops.argsort(-probs, axis=-1)
  v = ops.take_along_axis(probs, order, axis=-1)
  cum = ops.cumsum(v, axis=-1)
  last = ops.ones_like(v[:, :1], dtype="bool")
  is_end = ops.concatenate([ops.not_equal(v[:, :-1], v[:, 1:]), last], axis=-1)
  pos = ops.broadcast_to(ops.arange(c, dtype="int32")[None], ops.shape(v))
  ends = ops.sort(ops.where(is_end, pos, c + pos), axis=-1)
  starts = ops.concatenate([ops.cast(last, "int32"), ops.cast(is_end[:, :-1], "int32")], axis=-1)
  group = ops.cumsum(starts, axis=-1) - 1
  end = ops.take_along_axis(ends, group, axis=-1)
  mass_sorted = ops.take_along_axis(cum, end, axis=-1)
  rank_sorted = ops.cast(end + 1, probs.dtype)
  inverse = ops.argsort(order, axis=-1)
  return (
    ops.take_along_axis(mass_sorted, inverse, axis=-1),
    ops.take_along_axis(rank_sorted, inverse, axis=-1),
  )


@keras.saving.register_keras_serializable(package="keras_unc")
class ConformalSets(keras.layers.Layer):
  """Split-conformal prediction sets from the predictive probs and a fitted `q_hat`.

  Takes the output dict (or its `probs [B, C]`) and returns `{"prediction_set": bool [B, C],
  "set_size": int32 [B]}` with the scores of `keras_unc.posthoc.conformal` (THR, APS, RAPS).
  Randomized sets draw `U [B]` from a `keras.random.SeedGenerator(seed)` on every call, so
  served randomized sets are not reproducible; non-randomized sets are deterministic.

  Args:
    method: "thr", "aps" or "raps".
    q_hat: the fitted score threshold.
    lam, k_reg: the RAPS penalty (ignored by THR and APS).
    randomized: randomised APS/RAPS scores.
    allow_empty: keep empty sets (else an empty set becomes the top-1 label).
    seed: seed of the layer's seed generator.

  Example:
  ```python
  layer = APSConformal(alpha=0.1).fit(FitData(outputs, labels)).layer()
  sets = layer(outputs)["prediction_set"]
  ```

  Reference: Angelopoulos & Bates, "A Gentle Introduction to Conformal Prediction and
  Distribution-Free Uncertainty Quantification", 2021.
  """

  def __init__(
    self,
    method="aps",
    q_hat=1.0,
    lam=0.0,
    k_reg=0,
    randomized=False,
    allow_empty=False,
    seed=0,
    **kwargs,
  ):
    super().__init__(**kwargs)
    if method not in METHODS:
      raise ValueError(f"Unknown conformal method {method!r}: choose one of {METHODS}.")
    self.method, self.q_hat = method, float(q_hat)
    self.lam, self.k_reg = float(lam), int(k_reg)
    self.randomized, self.allow_empty, self.seed = bool(randomized), bool(allow_empty), int(seed)
    self.seed_generator = keras.random.SeedGenerator(self.seed) if self.randomized else None

  def call(self, inputs):
    probs = inputs["probs"] if isinstance(inputs, dict) else inputs
    probs = ops.cast(probs, "float32")
    if self.method == "thr":
      scores = 1.0 - probs
    else:
      mass, rank = _mass_and_rank_ops(probs)
      scores = mass
      if self.randomized:
        u = keras.random.uniform(ops.shape(probs)[:1], seed=self.seed_generator)
        scores = scores - u[:, None] * probs
      if self.method == "raps":
        scores = scores + self.lam * ops.maximum(0.0, rank - float(self.k_reg))
    sets = scores <= self.q_hat
    if not self.allow_empty:
      empty = ops.logical_not(ops.any(sets, axis=-1, keepdims=True))
      top = ops.equal(probs, ops.max(probs, axis=-1, keepdims=True))
      sets = ops.logical_or(sets, ops.logical_and(empty, top))
    return {"prediction_set": sets, "set_size": ops.sum(ops.cast(sets, "int32"), axis=-1)}

  def get_config(self):
    return {
      **super().get_config(),
      "method": self.method,
      "q_hat": self.q_hat,
      "lam": self.lam,
      "k_reg": self.k_reg,
      "randomized": self.randomized,
      "allow_empty": self.allow_empty,
      "seed": self.seed,
    }
