"""Post-hoc calibrators: temperature scaling, vector scaling and isotonic regression.

Each calibrator works on the model's predictive `probs [N, C]` (for M > 1 members or samples
the member mean of the softmaxes; for SNGP or heteroscedastic heads their own predictive), so
with more than one member it calibrates the predictive, not each member. Temperature and
vector scaling act on `z = log(max(probs, 1e-12))`; with one member `z` equals the logits up
to a per-row constant (as long as no probability is below 1e-12), so temperature scaling is
exactly `softmax(logits / T)` there.

`apply` returns `{"probs": calibrated float32 [N, C], "uncalibrated_probs": the input probs}`
and, for `uncertainty="msp"` or `"entropy"`, `"uncertainty"` recomputed from the calibrated
probs (as `keras_unc.layers.outputs.UncertaintyScore`). With `uncertainty=None` the model's own
`uncertainty` is left as it is (`keras_unc.training.calibrate` sets it to the score the
model's `uncertainty` matches, when it is the predictive's msp or entropy).

References: Guo et al., "On Calibration of Modern Neural Networks", ICML 2017 (temperature
and vector scaling); Zadrozny & Elkan, "Transforming Classifier Scores into Accurate
Multiclass Probability Estimates", KDD 2002 (one-vs-rest isotonic regression).
"""

from __future__ import annotations

import logging

import keras
import numpy as np
import scipy.optimize
from keras import ops

from keras_unc.layers.outputs import UNCERTAINTY_SCORES
from keras_unc.metrics import validation
from keras_unc.posthoc import base
from keras_unc.posthoc.base import Component, FitData, register

log = logging.getLogger(__name__)

EPS = 1e-12  # Floor of the probabilities before the log.
T_MIN, T_MAX = 1e-2, 1e2  # Temperature search range.


# --- Shared helpers ---------------------------------------------------------------------------


def _log_probs(probs):
  """`z = log(max(p, 1e-12))` in float64."""
  return np.log(np.maximum(np.asarray(probs, np.float64), EPS))


def _softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=-1, keepdims=True)


def _nll(logits, labels):
  """Mean NLL of `softmax(logits)` (float64)."""
  m = logits.max(axis=1, keepdims=True)
  lse = np.log(np.exp(logits - m).sum(axis=1)) + m[:, 0]
  return float(np.mean(lse - logits[np.arange(len(labels)), labels]))


def _uncertainty_np(probs, kind):
  probs = np.asarray(probs, np.float64)
  if kind == "msp":
    return (1.0 - probs.max(axis=1)).astype(np.float32)
  safe = np.where(probs > 0, probs, 1.0)
  return (-np.sum(probs * np.log(safe), axis=1)).astype(np.float32)


def _uncertainty_ops(probs, kind):
  """As `UncertaintyScore` (keras_unc/layers/outputs.py)."""
  if kind == "msp":
    return 1.0 - ops.max(probs, axis=-1)
  return -ops.sum(ops.where(probs > 0, probs * ops.log(ops.maximum(probs, 1e-30)), 0.0), axis=-1)


def _check_uncertainty(uncertainty):
  if uncertainty is not None and uncertainty not in UNCERTAINTY_SCORES:
    raise ValueError(
      f"uncertainty must be None (leave the model's uncertainty) or one of "
      f"{UNCERTAINTY_SCORES}, got {uncertainty!r}."
    )
  return uncertainty


def _fit_probs_labels(data: FitData):
  if not isinstance(data, FitData):
    raise ValueError(f"fit takes a posthoc.FitData, got {type(data).__name__}.")
  probs = base.probs_of(data.outputs, where="FitData.outputs")
  labels = validation.check_labels(data.labels, probs.shape[0], probs.shape[1], name="labels")
  return probs, labels


def _state_array(arrays, key, name):
  if key not in arrays:
    raise ValueError(
      f"The state of the calibrator {name!r} lacks {key!r} (has {sorted(arrays)}): it was "
      "saved by another calibrator or version; run calibrate again."
    )
  return np.asarray(arrays[key])


class _Calibrator(Component):
  """Common parts: the `uncertainty` option and the output dict."""

  def __init__(self, uncertainty=None):
    self.uncertainty = _check_uncertainty(uncertainty)

  def get_config(self):
    return {"uncertainty": self.uncertainty}

  def _calibrate(self, probs):
    raise NotImplementedError

  def apply(self, outputs):
    self._check_fitted()
    probs = base.probs_of(outputs, getattr(self, "_num_classes", None))
    calibrated = self._calibrate(probs)
    found = {
      "probs": calibrated.astype(np.float32),
      "uncalibrated_probs": np.asarray(outputs["probs"]),
    }
    if _check_uncertainty(self.uncertainty) is not None:
      found["uncertainty"] = _uncertainty_np(calibrated, self.uncertainty)
    return found


class _CalibrationLayer(keras.layers.Layer):
  """Base of the calibration layers: dict (or probs tensor) in, dict out."""

  def __init__(self, uncertainty=None, **kwargs):
    super().__init__(**kwargs)
    self.uncertainty = _check_uncertainty(uncertainty)

  def _calibrate(self, probs):
    raise NotImplementedError

  def call(self, inputs):
    probs = inputs["probs"] if isinstance(inputs, dict) else inputs
    calibrated = self._calibrate(ops.cast(probs, "float32"))
    found = {"probs": calibrated, "uncalibrated_probs": probs}
    if self.uncertainty is not None:
      found["uncertainty"] = _uncertainty_ops(calibrated, self.uncertainty)
    return found

  def get_config(self):
    return {**super().get_config(), "uncertainty": self.uncertainty}


def _log_probs_ops(probs):
  return ops.log(ops.maximum(probs, EPS))


# --- Temperature scaling -----------------------------------------------------------------------


def fit_temperature(z, labels, t_min=T_MIN, t_max=T_MAX):
  """The NLL-optimal temperature of logits `z [N, C]` in `[t_min, t_max]`.

  The NLL is convex in the inverse temperature `s = 1/T` (a log-sum-exp of functions linear
  in s), so a Newton iteration on `dNLL/ds` safeguarded by bisection on a sign bracket finds
  its minimum (to |dNLL/ds| < 1e-12); a minimum outside the range is clipped to its end.
  """
  z = np.asarray(z, np.float64)
  rows = np.arange(len(labels))
  z_y = z[rows, labels]

  def derivatives(s):
    p = _softmax(s * z)
    mean_z = np.sum(p * z, axis=1)
    var_z = np.sum(p * z * z, axis=1) - mean_z**2
    return float(np.mean(mean_z - z_y)), float(np.mean(np.maximum(var_z, 0.0)))

  lo, hi = 1.0 / t_max, 1.0 / t_min
  if derivatives(lo)[0] >= 0:
    return t_max
  if derivatives(hi)[0] <= 0:
    return t_min
  s = min(max(1.0, lo), hi)
  for _ in range(200):
    g, h = derivatives(s)
    if abs(g) < 1e-12:
      break
    if g > 0:
      hi = s
    else:
      lo = s
    step = s - g / h if h > 0 else None
    s = step if step is not None and lo < step < hi else 0.5 * (lo + hi)
    if hi - lo < 1e-15 * hi:
      break
  return 1.0 / s


@register("calibrator", "temperature")
class TemperatureCalibrator(_Calibrator):
  """Temperature scaling: `p = softmax(z / T)` with `z = log(max(probs, 1e-12))` and the one
  T > 0 minimising the NLL of the calibration split (searched in [0.01, 100]).

  With several members or samples it rescales the predictive (member mean), not each member.

  Args:
    uncertainty: None (keep the model's `uncertainty`), "msp" or "entropy" (recompute it
      from the calibrated probs).

  Reference: Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.
  """

  def fit(self, data):
    probs, labels = _fit_probs_labels(data)
    z = _log_probs(probs)
    self.temperature = float(fit_temperature(z, labels))
    if self.temperature in (T_MIN, T_MAX):
      log.warning("The NLL-optimal temperature is at the search bound %g.", self.temperature)
    self.nll_before = _nll(z, labels)
    self.nll_after = _nll(z / self.temperature, labels)
    self._fitted = True
    return self

  def state(self):
    self._check_fitted()
    return {"temperature": np.asarray(self.temperature, np.float64)}

  def load_state(self, arrays):
    t = float(_state_array(arrays, "temperature", self.name))
    if not np.isfinite(t) or t <= 0:
      raise ValueError(f"The temperature in the state must be finite and > 0, got {t}.")
    self.temperature = t
    self._fitted = True
    return self

  def _calibrate(self, probs):
    return _softmax(_log_probs(probs) / self.temperature)

  def layer(self):
    self._check_fitted()
    return TemperatureScaling(self.temperature, uncertainty=self.uncertainty)


@keras.saving.register_keras_serializable(package="keras_unc")
class TemperatureScaling(_CalibrationLayer):
  """Temperature scaling of the predictive: `softmax(log(max(probs, 1e-12)) / temperature)`.

  Takes the output dict (or its `probs [B, C]`) and returns `{"probs", "uncalibrated_probs"}`
  (and `"uncertainty"` for `uncertainty="msp"|"entropy"`).

  Args:
    temperature: T > 0 (fitted by `TemperatureCalibrator`).
    uncertainty: None, "msp" or "entropy".

  Example:
  ```python
  layer = TemperatureScaling(1.7, uncertainty="msp")
  outputs.update(layer(outputs))
  ```

  Reference: Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.
  """

  def __init__(self, temperature=1.0, uncertainty=None, **kwargs):
    super().__init__(uncertainty=uncertainty, **kwargs)
    if not float(temperature) > 0:
      raise ValueError(f"temperature must be > 0, got {temperature!r}.")
    self.temperature = float(temperature)

  def _calibrate(self, probs):
    return ops.softmax(_log_probs_ops(probs) / self.temperature, axis=-1)

  def get_config(self):
    return {**super().get_config(), "temperature": self.temperature}


# --- Vector scaling ----------------------------------------------------------------------------


def vector_nll_and_grad(params, z, onehot, l2=0.0):
  """NLL of `softmax(w * z + b)` (params = concat(w, b)) plus `l2 * |b|^2`, and its gradient."""
  c = z.shape[1]
  w, b = params[:c], params[c:]
  p = _softmax(w * z + b)
  n = len(z)
  logits = w * z + b
  m = logits.max(axis=1, keepdims=True)
  lse = np.log(np.exp(logits - m).sum(axis=1)) + m[:, 0]
  nll = float(np.mean(lse - np.sum(onehot * logits, axis=1))) + l2 * float(b @ b)
  diff = (p - onehot) / n
  grad = np.concatenate([np.sum(diff * z, axis=0), np.sum(diff, axis=0) + 2.0 * l2 * b])
  return nll, grad


@register("calibrator", "vector")
class VectorCalibrator(_Calibrator):
  """Vector scaling: `p = softmax(w * z + b)` with per-class `w, b [C]` and
  `z = log(max(probs, 1e-12))`, fitted by minimising the calibration NLL (+ `l2 * |b|^2`)
  with L-BFGS and the analytic gradient, from the identity `w = 1, b = 0`.

  The NLL is convex in `(w, b)`. Adding a constant to every `b_j` leaves the probabilities
  unchanged, so without `l2` the fitted `b` is centred (mean 0) after the fit. With several
  members it rescales the predictive (member mean), not each member.

  Args:
    l2: weight of the L2 penalty on `b` (0: none; a small value such as 1e-4 steers rare
      classes towards no bias).
    max_iter: L-BFGS iterations.
    uncertainty: None, "msp" or "entropy" (as `TemperatureCalibrator`).

  Reference: Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.
  """

  def __init__(self, l2: float = 0.0, max_iter: int = 1000, uncertainty=None):
    super().__init__(uncertainty)
    if not (isinstance(l2, (int, float)) and l2 >= 0):
      raise ValueError(f"l2 must be a number >= 0, got {l2!r}.")
    self.l2 = float(l2)
    self.max_iter = validation.check_int(max_iter, "max_iter")

  def get_config(self):
    return {**super().get_config(), "l2": self.l2, "max_iter": self.max_iter}

  def fit(self, data):
    probs, labels = _fit_probs_labels(data)
    z = _log_probs(probs)
    c = z.shape[1]
    onehot = np.eye(c)[labels]
    x0 = np.concatenate([np.ones(c), np.zeros(c)])
    result = scipy.optimize.minimize(
      vector_nll_and_grad,
      x0,
      args=(z, onehot, self.l2),
      jac=True,
      method="L-BFGS-B",
      options={"maxiter": self.max_iter, "gtol": 1e-10, "ftol": 1e-15, "maxcor": 20},
    )
    if not np.all(np.isfinite(result.x)):
      raise ValueError("Vector scaling diverged (non-finite parameters); try l2 > 0.")
    self.scale, self.bias = result.x[:c].copy(), result.x[c:].copy()
    if self.l2 == 0:
      self.bias -= self.bias.mean()
    self.nll_before = _nll(z, labels)
    self.nll_after = _nll(self.scale * z + self.bias, labels)
    self._num_classes = c
    self._fitted = True
    return self

  def state(self):
    self._check_fitted()
    return {"scale": np.asarray(self.scale, np.float64), "bias": np.asarray(self.bias, np.float64)}

  def load_state(self, arrays):
    scale = _state_array(arrays, "scale", self.name).astype(np.float64)
    bias = _state_array(arrays, "bias", self.name).astype(np.float64)
    if scale.ndim != 1 or scale.shape != bias.shape or not np.all(np.isfinite(scale + bias)):
      raise ValueError(
        f"The vector-scaling state needs finite scale and bias of one shape [C], got "
        f"{scale.shape} and {bias.shape}."
      )
    self.scale, self.bias, self._num_classes = scale, bias, len(scale)
    self._fitted = True
    return self

  def _calibrate(self, probs):
    return _softmax(self.scale * _log_probs(probs) + self.bias)

  def layer(self):
    self._check_fitted()
    layer = VectorScaling(self._num_classes, uncertainty=self.uncertainty)
    layer.scale.assign(self.scale.astype(np.float32))
    layer.bias.assign(self.bias.astype(np.float32))
    return layer


@keras.saving.register_keras_serializable(package="keras_unc")
class VectorScaling(_CalibrationLayer):
  """Vector scaling of the predictive: `softmax(scale * log(max(probs, 1e-12)) + bias)`.

  `scale` and `bias` `[num_classes]` are non-trainable weights (identity until assigned;
  `VectorCalibrator.layer()` sets the fitted values). Takes the output dict (or its
  `probs [B, C]`), returns `{"probs", "uncalibrated_probs"}` (and `"uncertainty"`).

  Args:
    num_classes: C.
    uncertainty: None, "msp" or "entropy".

  Example:
  ```python
  layer = VectorScaling(10)
  layer.scale.assign(w)
  layer.bias.assign(b)
  outputs.update(layer(outputs))
  ```

  Reference: Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.
  """

  def __init__(self, num_classes, uncertainty=None, **kwargs):
    super().__init__(uncertainty=uncertainty, **kwargs)
    self.num_classes = validation.check_int(num_classes, "num_classes")
    self.scale = self.add_weight(
      name="scale", shape=(self.num_classes,), initializer="ones", trainable=False
    )
    self.bias = self.add_weight(
      name="bias", shape=(self.num_classes,), initializer="zeros", trainable=False
    )
    self.built = True

  def _calibrate(self, probs):
    scale, bias = ops.cast(self.scale, "float32"), ops.cast(self.bias, "float32")
    return ops.softmax(scale * _log_probs_ops(probs) + bias, axis=-1)

  def get_config(self):
    return {**super().get_config(), "num_classes": self.num_classes}


# --- Isotonic regression -----------------------------------------------------------------------


def pool_adjacent_violators(y, w):
  """Weighted least-squares non-decreasing fit of `y` (in the given order): block means."""
  means, weights, counts = [], [], []
  for yi, wi in zip(y, w):
    means.append(float(yi))
    weights.append(float(wi))
    counts.append(1)
    while len(means) > 1 and means[-2] > means[-1]:
      w2 = weights[-2] + weights[-1]
      m2 = (means[-2] * weights[-2] + means[-1] * weights[-1]) / w2
      c2 = counts[-2] + counts[-1]
      del means[-1], weights[-1], counts[-1]
      means[-1], weights[-1], counts[-1] = m2, w2, c2
  return np.repeat(means, counts)


def fit_isotonic(x, y):
  """Knots `(xs, ys)` of the isotonic (non-decreasing) regression of `y` on `x`.

  Equal x are first merged into their mean y (weighted by count); the pool-adjacent-violators
  fit then keeps, of each run of equal fitted values, only its first and last point (which
  leaves the linear interpolation unchanged), as scikit-learn's `IsotonicRegression`.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  xs, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
  ys = np.bincount(inverse, weights=y, minlength=len(xs)) / counts
  fitted = pool_adjacent_violators(ys, counts)
  keep = np.ones(len(xs), bool)
  if len(xs) > 2:
    keep[1:-1] = (fitted[1:-1] != fitted[:-2]) | (fitted[1:-1] != fitted[2:])
  return xs[keep], fitted[keep]


def _renormalise(q):
  sums = q.sum(axis=1, keepdims=True)
  uniform = np.full_like(q, 1.0 / q.shape[1])
  return np.where(sums > 0, q / np.where(sums > 0, sums, 1.0), uniform)


@register("calibrator", "isotonic")
class IsotonicCalibrator(_Calibrator):
  """One-vs-rest isotonic regression: per class j a non-decreasing map of `p_j` fitted to
  `1[y = j]` by pool-adjacent-violators, predicted by linear interpolation between the fitted
  knots and clipped to the end knots (as scikit-learn's `IsotonicRegression(out_of_bounds=
  "clip")`); rows are then renormalised to sum to 1 (a row that maps to all zeros becomes
  uniform). Calibrated probabilities can tie (the maps are piecewise constant in places).

  With several members it calibrates the predictive (member mean), not each member.

  Args:
    uncertainty: None, "msp" or "entropy" (as `TemperatureCalibrator`).

  Reference: Zadrozny & Elkan, "Transforming Classifier Scores into Accurate Multiclass
  Probability Estimates", KDD 2002.
  """

  def fit(self, data):
    probs, labels = _fit_probs_labels(data)
    knots = [fit_isotonic(probs[:, j], labels == j) for j in range(probs.shape[1])]
    self._set_knots(knots)
    self._fitted = True
    return self

  def _set_knots(self, knots):
    num_knots = np.array([len(xs) for xs, _ in knots], np.int64)
    k = max(2, int(num_knots.max()))
    kx, ky = np.zeros((len(knots), k)), np.zeros((len(knots), k))
    for j, (xs, ys) in enumerate(knots):  # Padded by repeating the last knot.
      kx[j], ky[j] = np.pad(xs, (0, k - len(xs)), mode="edge"), np.pad(ys, (0, k - len(ys)), "edge")
    self.knots_x, self.knots_y, self.num_knots = kx, ky, num_knots
    self._num_classes = len(knots)

  def state(self):
    self._check_fitted()
    return {"knots_x": self.knots_x, "knots_y": self.knots_y, "num_knots": self.num_knots}

  def load_state(self, arrays):
    kx = _state_array(arrays, "knots_x", self.name).astype(np.float64)
    ky = _state_array(arrays, "knots_y", self.name).astype(np.float64)
    nk = _state_array(arrays, "num_knots", self.name).astype(np.int64)
    if kx.ndim != 2 or kx.shape != ky.shape or nk.shape != kx.shape[:1]:
      raise ValueError(
        f"The isotonic state needs knots_x, knots_y [C, K] and num_knots [C], got "
        f"{kx.shape}, {ky.shape} and {nk.shape}."
      )
    if np.any(nk < 1) or np.any(nk > kx.shape[1]) or np.any(np.diff(kx, axis=1) < 0):
      raise ValueError("The isotonic state is malformed (knot counts or knot order).")
    self._set_knots([(kx[j, : nk[j]], ky[j, : nk[j]]) for j in range(len(nk))])
    self._fitted = True
    return self

  def _calibrate(self, probs):
    q = np.empty_like(probs)
    for j in range(probs.shape[1]):
      xs, ys = self.knots_x[j, : self.num_knots[j]], self.knots_y[j, : self.num_knots[j]]
      q[:, j] = np.interp(np.clip(probs[:, j], xs[0], xs[-1]), xs, ys)
    return _renormalise(q)

  def layer(self):
    self._check_fitted()
    layer = IsotonicCalibration(
      self._num_classes, self.knots_x.shape[1], uncertainty=self.uncertainty
    )
    layer.knots_x.assign(self.knots_x.astype(np.float32))
    layer.knots_y.assign(self.knots_y.astype(np.float32))
    return layer


@keras.saving.register_keras_serializable(package="keras_unc")
class IsotonicCalibration(_CalibrationLayer):
  """Per-class piecewise-linear maps of the predictive, then row renormalisation.

  `q_j = interp(clip(p_j, x_j1, x_jK), knots_x[j], knots_y[j])` and `p' = q / sum(q)` (uniform
  where `q` is all zero). `knots_x, knots_y [num_classes, num_knots]` are non-trainable
  weights: non-decreasing knots per class, padded by repeating the last knot
  (`IsotonicCalibrator.layer()` sets them). Memory is `B * C * K` comparisons per call.

  Args:
    num_classes: C.
    num_knots: K (>= 2).
    uncertainty: None, "msp" or "entropy".

  Example:
  ```python
  layer = IsotonicCalibration(10, 32)
  layer.knots_x.assign(kx)
  layer.knots_y.assign(ky)
  outputs.update(layer(outputs))
  ```

  Reference: Zadrozny & Elkan, "Transforming Classifier Scores into Accurate Multiclass
  Probability Estimates", KDD 2002.
  """

  def __init__(self, num_classes, num_knots=2, uncertainty=None, **kwargs):
    super().__init__(uncertainty=uncertainty, **kwargs)
    self.num_classes = validation.check_int(num_classes, "num_classes")
    self.num_knots = validation.check_int(num_knots, "num_knots", minimum=2)
    shape = (self.num_classes, self.num_knots)
    self.knots_x = self.add_weight(
      name="knots_x", shape=shape, initializer="zeros", trainable=False
    )
    self.knots_y = self.add_weight(
      name="knots_y", shape=shape, initializer="zeros", trainable=False
    )
    self.built = True

  def _calibrate(self, probs):
    kx, ky = ops.cast(self.knots_x, "float32"), ops.cast(self.knots_y, "float32")
    x = ops.clip(probs, kx[:, 0], kx[:, -1])  # [B, C]
    # Knots strictly below x: x lies in (kx[k-1], kx[k]] (k >= 1) or equals kx[0] (k = 0).
    below = ops.sum(ops.cast(x[:, :, None] > kx[None], "int32"), axis=-1)
    left = ops.clip(below - 1, 0, self.num_knots - 2)
    left = ops.expand_dims(left, -1)

    def take(table, idx):  # table [C, K], idx [B, C, 1] -> [B, C]
      rows = ops.broadcast_to(table[None], (ops.shape(idx)[0], self.num_classes, self.num_knots))
      return ops.squeeze(ops.take_along_axis(rows, idx, axis=2), -1)

    x1, x2 = take(kx, left), take(kx, left + 1)
    y1, y2 = take(ky, left), take(ky, left + 1)
    width = x2 - x1
    t = ops.where(width > 0, (x - x1) / ops.where(width > 0, width, 1.0), 0.0)
    q = y1 + t * (y2 - y1)
    sums = ops.sum(q, axis=-1, keepdims=True)
    uniform = ops.ones_like(q) / self.num_classes
    return ops.where(sums > 0, q / ops.where(sums > 0, sums, 1.0), uniform)

  def get_config(self):
    return {**super().get_config(), "num_classes": self.num_classes, "num_knots": self.num_knots}
