"""Post-hoc OOD detectors: a score (higher = more OOD) and a threshold, served in the model.

Each detector fits its statistics (where it has any) on in-distribution training outputs
(`FitData.train_outputs`), then a threshold on the held-out calibration outputs
(`FitData.outputs`): the `tpr`-quantile of their scores (the smallest score with at least a
fraction `tpr` of calibration scores at or below it), so that about `tpr` of
in-distribution examples are accepted. `apply` adds `ood_score` (float32 `[N]`) and
`is_ood` (bool `[N]`, `ood_score > threshold`); `layer()` computes the same with
`keras.ops` inside the SavedModel.

| name | score | fits on | paper defaults |
|---|---|---|---|
| `msp` | `1 - max p` | - | - |
| `max_logit` | `-max z` (member-averaged) | - | - |
| `energy` | `-T logsumexp(z / T)` | - | `T = 1` |
| `gen` | `sum_{top-M} p^g (1 - p)^g` | - | `g = 0.1, M = 100` |
| `mutual_information` | `H[mean p_m] - mean H[p_m]` | - (M > 1) | - |
| `variation_ratio` | `1 - modal votes / M` | - (M > 1) | - |
| `mahalanobis` | `min_k` squared Mahalanobis distance | train embeddings, labels | - |
| `relative_mahalanobis` | the above minus the class-agnostic one | train embeddings, labels | - |
| `knn` | k-th NN distance of normalised embeddings | train embeddings | `k = 50` |
| `vim` | `alpha ||x^{P-perp}|| - logsumexp(z)` | train embeddings, head | `D_p` by `D` |
| `react` | energy of `min(x, c) @ W + b` | train embeddings, head | `p = 90` |

Formulas and references: `keras_unc.metrics.ood_scores` and `keras_unc.metrics.mahalanobis`.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from keras_unc import metrics
from keras_unc.metrics.validation import check_fraction, check_int
from keras_unc.posthoc.base import Component, FitData, register

__all__ = ["DETECTORS", "Detector", "DetectorLayer"]

_EPS = 1e-12


def _need(outputs, key, detector):
  if key not in outputs:
    raise ValueError(
      f"The {detector!r} detector needs the network output {key!r}, which the outputs lack "
      f"(keys: {', '.join(sorted(outputs))})."
    )
  return np.asarray(outputs[key])


def _check_tpr(tpr):
  tpr = check_fraction(tpr, "tpr")
  if tpr == 0.0:
    raise ValueError("tpr must be in (0, 1]: the fraction of in-distribution examples kept.")
  return tpr


class Detector(Component):
  """Base of the OOD detectors (module docstring): subclasses define `_params`,
  `_fit_stats(data) -> {name: array}` and `_scores(outputs) -> float64 [N]` (NumPy, using
  `self._arrays`), and the same score in `keras.ops` in `DetectorLayer`.
  """

  kind = "detector"
  needs_train = False  # Fits on FitData.train_outputs.
  needs_labels = False  # ... and FitData.train_labels.
  needs_head = False  # Needs FitData.linear_head.
  _train_keys = ("embedding",)

  def __init__(self, tpr: float = 0.95, **params):
    self.tpr = _check_tpr(tpr)
    self._params = params
    self._arrays: dict[str, np.ndarray] = {}
    self.threshold = None
    self._fitted = False

  def get_config(self) -> dict[str, Any]:
    return {"tpr": self.tpr, **self._params}

  def _check_data(self, data: FitData):
    if self.needs_head and data.linear_head is None:
      raise ValueError(
        f"The {self.name!r} detector needs the network's last linear layer "
        "(FitData.linear_head = (W [D, C], b [C])), and this network has none (no Dense "
        "`head` computing logits = embedding @ W + b): use another detector (energy, knn, "
        "mahalanobis, ...)."
      )
    if self.needs_train and data.train_outputs is None:
      raise ValueError(
        f"The {self.name!r} detector fits on in-distribution training outputs: pass "
        "FitData.train_outputs (calibrate's fit_split)."
      )
    if self.needs_labels and data.train_labels is None:
      raise ValueError(
        f"The {self.name!r} detector fits class statistics: pass FitData.train_labels."
      )
    if self.needs_train:
      for key in self._train_keys:
        _need(data.train_outputs, key, self.name)

  def _fit_stats(self, data: FitData) -> dict[str, np.ndarray]:
    return {}

  def _scores(self, outputs) -> np.ndarray:
    raise NotImplementedError

  def fit(self, data: FitData) -> Detector:
    self._check_data(data)
    self._arrays = {k: np.asarray(v, np.float64) for k, v in self._fit_stats(data).items()}
    scores = self._scores(data.outputs).astype(np.float32)
    self.threshold = float(np.quantile(scores, self.tpr, method="inverted_cdf"))
    self._fitted = True
    return self

  def state(self) -> dict[str, np.ndarray]:
    self._check_fitted()
    return {**self._arrays, "threshold": np.asarray(self.threshold, np.float64)}

  def load_state(self, arrays: dict[str, np.ndarray]) -> Detector:
    arrays = dict(arrays)
    if "threshold" not in arrays:
      raise ValueError(f"The {self.name!r} detector state lacks 'threshold'.")
    self.threshold = float(np.asarray(arrays.pop("threshold")))
    self._arrays = {k: np.asarray(v, np.float64) for k, v in arrays.items()}
    self._fitted = True
    return self

  def apply(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    self._check_fitted()
    score = self._scores(outputs).astype(np.float32)
    return {"ood_score": score, "is_ood": score > np.float32(self.threshold)}

  def layer(self):
    self._check_fitted()
    return DetectorLayer(
      detector=self.name,
      params=self._layer_params(),
      arrays={**self._arrays, "threshold": np.asarray(self.threshold)},
    )

  def _layer_params(self):
    return dict(self._params)

  def _head(self, data):
    w, b = data.linear_head
    return {"weight": np.asarray(w, np.float64), "bias": np.asarray(b, np.float64)}


@register("detector", "msp")
class MSPDetector(Detector):
  """`1 - max_c p_c` (Hendrycks & Gimpel 2017)."""

  def __init__(self, tpr: float = 0.95):
    super().__init__(tpr)

  def _scores(self, outputs):
    return metrics.msp_uncertainty(_need(outputs, "probs", self.name))


@register("detector", "max_logit")
class MaxLogitDetector(Detector):
  """`-max_c z_c` of the member-averaged logits (Hendrycks et al. 2022)."""

  def __init__(self, tpr: float = 0.95):
    super().__init__(tpr)

  def _scores(self, outputs):
    return metrics.max_logit_score(_need(outputs, "logits", self.name))


@register("detector", "energy")
class EnergyDetector(Detector):
  """Energy `-T logsumexp(z / T)` (Liu et al. 2020), `T = 1` by default."""

  def __init__(self, tpr: float = 0.95, temperature: float = 1.0):
    metrics.energy_score(np.zeros((1, 2)), temperature)  # Validates.
    super().__init__(tpr, temperature=float(temperature))

  def _scores(self, outputs):
    return metrics.energy_score(_need(outputs, "logits", self.name), self._params["temperature"])


@register("detector", "gen")
class GENDetector(Detector):
  """GEN `sum_{top-M} p^gamma (1 - p)^gamma` (Liu, Lochman & Zach 2023)."""

  def __init__(self, tpr: float = 0.95, gamma: float = 0.1, top_m: int = 100):
    metrics.gen_score(np.full((1, 2), 0.5), gamma, top_m)  # Validates.
    super().__init__(tpr, gamma=float(gamma), top_m=int(top_m))

  def _scores(self, outputs):
    return metrics.gen_score(_need(outputs, "probs", self.name), **self._params)


@register("detector", "mutual_information")
class MutualInformationDetector(Detector):
  """BALD mutual information of the member softmaxes (needs M > 1)."""

  def __init__(self, tpr: float = 0.95):
    super().__init__(tpr)

  def _scores(self, outputs):
    return metrics.mutual_information(_need(outputs, "logits", self.name))


@register("detector", "variation_ratio")
class VariationRatioDetector(Detector):
  """`1 - modal votes / M` over the members (needs M > 1)."""

  def __init__(self, tpr: float = 0.95):
    super().__init__(tpr)

  def _scores(self, outputs):
    return metrics.variation_ratio(_need(outputs, "logits", self.name))


@register("detector", "mahalanobis")
class MahalanobisDetector(Detector):
  """Min-over-classes squared Mahalanobis distance (Lee et al. 2018), class means and a
  shared covariance fitted on the training embeddings.
  """

  needs_train = needs_labels = True
  relative = False

  def __init__(self, tpr: float = 0.95, rcond: float = 1e-10):
    super().__init__(tpr, rcond=float(rcond))

  def _fit_stats(self, data):
    fit = metrics.mahalanobis_fit(
      data.train_outputs["embedding"],
      data.train_labels,
      relative=self.relative,
      rcond=self._params["rcond"],
    )
    arrays = {"origin": fit.origin, "whitener": fit.whitener, "means": fit.means}
    if self.relative:
      arrays["whitener0"] = fit.whitener0
    return arrays

  def _scores(self, outputs):
    a = self._arrays
    fit = metrics.MahalanobisFit(a["origin"], a["whitener"], a["means"], a.get("whitener0"))
    return metrics.mahalanobis_score(
      fit, _need(outputs, "embedding", self.name), relative=self.relative
    )

  def _layer_params(self):
    return {}


@register("detector", "relative_mahalanobis")
class RelativeMahalanobisDetector(MahalanobisDetector):
  """Relative Mahalanobis distance (Ren et al. 2021): minus the class-agnostic distance."""

  relative = True


@register("detector", "knn")
class KNNDetector(Detector):
  """k-th nearest-neighbour distance of normalised embeddings (Sun et al. 2022) to a bank
  of (a seeded subsample of `bank_size`) normalised training embeddings.
  """

  needs_train = True

  def __init__(self, tpr: float = 0.95, k: int = 50, bank_size: int | None = 10000, seed=0):
    check_int(k, "k")
    if bank_size is not None:
      check_int(bank_size, "bank_size")
    super().__init__(tpr, k=int(k), bank_size=bank_size, seed=int(seed))

  def _fit_stats(self, data):
    p = self._params
    return {"bank": metrics.knn_fit(data.train_outputs["embedding"], p["bank_size"], p["seed"])}

  def _scores(self, outputs):
    return metrics.knn_scores(
      self._arrays["bank"], _need(outputs, "embedding", self.name), self._params["k"]
    )

  def _layer_params(self):
    return {"k": min(self._params["k"], int(self._arrays["bank"].shape[0]))}


@register("detector", "vim")
class ViMDetector(Detector):
  """ViM (Wang et al. 2022): residual off the principal subspace of training features,
  scaled by alpha, minus the energy-free logsumexp. Needs the linear head.
  """

  needs_train = needs_head = True

  def __init__(self, tpr: float = 0.95, dim: int | None = None):
    if dim is not None:
      check_int(dim, "dim")
    super().__init__(tpr, dim=dim)

  def _fit_stats(self, data):
    head = self._head(data)
    fit = metrics.vim_fit(
      data.train_outputs["embedding"], head["weight"], head["bias"], self._params["dim"]
    )
    return {
      **head,
      "origin": fit.origin,
      "residual_basis": fit.residual_basis,
      "alpha": np.asarray(fit.alpha),
    }

  def _scores(self, outputs):
    a = self._arrays
    fit = metrics.ViMFit(a["origin"], a["residual_basis"], float(a["alpha"]))
    return metrics.vim_scores(fit, _need(outputs, "embedding", self.name), a["weight"], a["bias"])

  def _layer_params(self):
    return {}


@register("detector", "react")
class ReActDetector(Detector):
  """ReAct (Sun et al. 2021): energy of the logits of features clipped at the
  `percentile`-th percentile of training activations. Needs the linear head.
  """

  needs_train = needs_head = True

  def __init__(self, tpr: float = 0.95, percentile: float = 90.0, temperature: float = 1.0):
    if isinstance(percentile, bool) or not 0.0 <= float(percentile) <= 100.0:
      raise ValueError(f"percentile must be in [0, 100], got {percentile!r}.")
    metrics.energy_score(np.zeros((1, 2)), temperature)  # Validates.
    super().__init__(tpr, percentile=float(percentile), temperature=float(temperature))

  def _fit_stats(self, data):
    clip = metrics.react_fit(data.train_outputs["embedding"], self._params["percentile"])
    return {**self._head(data), "clip": np.asarray(clip)}

  def _scores(self, outputs):
    a = self._arrays
    return metrics.react_scores(
      _need(outputs, "embedding", self.name),
      a["weight"],
      a["bias"],
      float(a["clip"]),
      self._params["temperature"],
    )

  def _layer_params(self):
    return {"temperature": self._params["temperature"]}


DETECTORS = (
  "msp",
  "max_logit",
  "energy",
  "gen",
  "mutual_information",
  "variation_ratio",
  "mahalanobis",
  "relative_mahalanobis",
  "knn",
  "vim",
  "react",
)


# ------------------------------------------------------------------------------------------
# The served layer.


def _mean_logits(logits):
  return keras.ops.mean(logits, axis=1) if len(logits.shape) == 3 else logits


def _logsumexp(z):
  return keras.ops.logsumexp(z, axis=-1)


def _energy(z, temperature):
  return -temperature * _logsumexp(z / temperature)


def _entropy(p):
  return -keras.ops.sum(p * keras.ops.log(keras.ops.maximum(p, 1e-30)), axis=-1)


def _sq_dist(x, centres):
  """`[B, K]` squared distances of rows of `x` to rows of `centres`."""
  x_sq = keras.ops.sum(x * x, axis=-1, keepdims=True)
  c_sq = keras.ops.sum(centres * centres, axis=-1)
  return keras.ops.maximum(
    x_sq - 2.0 * keras.ops.matmul(x, keras.ops.transpose(centres)) + c_sq, 0.0
  )


def _layer_score(name, params, w, outputs):
  """The score of detector `name` in `keras.ops` (float32 `[B]`)."""
  ops = keras.ops
  if name == "msp":
    return 1.0 - ops.max(outputs["probs"], axis=-1)
  if name == "max_logit":
    return -ops.max(_mean_logits(outputs["logits"]), axis=-1)
  if name == "energy":
    return _energy(_mean_logits(outputs["logits"]), params["temperature"])
  if name == "gen":
    probs = outputs["probs"]
    top = ops.top_k(probs, min(params["top_m"], probs.shape[-1]), sorted=False)[0]
    gamma = params["gamma"]
    return ops.sum(ops.power(top, gamma) * ops.power(ops.maximum(1.0 - top, 0.0), gamma), -1)
  if name in ("mutual_information", "variation_ratio"):
    logits = outputs["logits"]
    if len(logits.shape) != 3 or (logits.shape[1] is not None and logits.shape[1] < 2):
      raise ValueError(
        f"The {name!r} detector needs logits [N, M, C] of M > 1 members or MC samples, got "
        f"shape {tuple(logits.shape)}: use a multi-member or MC method."
      )
    if name == "mutual_information":
      p = ops.softmax(logits, axis=-1)
      return ops.maximum(_entropy(ops.mean(p, axis=1)) - ops.mean(_entropy(p), axis=1), 0.0)
    votes = ops.one_hot(ops.argmax(logits, axis=-1), logits.shape[-1], dtype=logits.dtype)
    return 1.0 - ops.max(ops.mean(votes, axis=1), axis=-1)
  x = outputs["embedding"]
  if name in ("mahalanobis", "relative_mahalanobis"):
    x = x - w["origin"]
    score = ops.min(_sq_dist(ops.matmul(x, w["whitener"]), w["means"]), axis=-1)
    if name == "relative_mahalanobis":
      score = score - ops.sum(ops.square(ops.matmul(x, w["whitener0"])), axis=-1)
    return score
  if name == "knn":
    norm = ops.sqrt(ops.sum(x * x, axis=-1, keepdims=True))
    x = x / ops.maximum(norm, _EPS)
    d = _sq_dist(x, w["bank"])
    kth = -ops.top_k(-d, params["k"], sorted=True)[0][:, -1]
    return ops.sqrt(ops.maximum(kth, 0.0))
  if name == "vim":
    residual = ops.matmul(x - w["origin"], w["residual_basis"])
    virtual = w["alpha"] * ops.sqrt(ops.sum(residual * residual, axis=-1))
    return virtual - _logsumexp(ops.matmul(x, w["weight"]) + w["bias"])
  if name == "react":
    logits = ops.matmul(ops.minimum(x, w["clip"]), w["weight"]) + w["bias"]
    return _energy(logits, params["temperature"])
  raise ValueError(f"Unknown detector {name!r}: choose one of {', '.join(DETECTORS)}.")


@keras.saving.register_keras_serializable(package="keras_unc")
class DetectorLayer(keras.layers.Layer):
  """Serves a fitted OOD detector: `{..., inputs} -> {"ood_score": [B], "is_ood": [B]}`.

  The detector's fitted arrays (and its threshold) are non-trainable float32 weights; a
  rebuilt layer (`from_config`) has zeros of the same shapes until its weights are loaded.
  It computes in float32 whatever the `dtype` policy passed (mixed precision included).

  Args:
    detector: the registered detector name (`keras_unc.posthoc.detectors.DETECTORS`).
    params: its scalar hyperparameters used by the score (e.g. `{"temperature": 1.0}`).
    arrays: `{name: array}` fitted values (including the 0-d `threshold`); or None with
      `shapes`.
    shapes: `{name: shape}` (from `get_config`) when `arrays` is None.

  Example:
    ```python
    det = posthoc.get("detector", "energy")().fit(posthoc.FitData(outputs, labels))
    served = det.layer()({"logits": logits, "probs": probs})  # ood_score, is_ood
    ```

  References: see `keras_unc.metrics.ood_scores` (per detector).
  """

  def __init__(self, detector, params=None, arrays=None, shapes=None, **kwargs):
    # Always float32 (a threshold compared in bfloat16 would flip decisions).
    super().__init__(**{**kwargs, "dtype": "float32"})
    if detector not in DETECTORS:
      raise ValueError(f"Unknown detector {detector!r}: choose one of {', '.join(DETECTORS)}.")
    self.detector = detector
    self.params = dict(params or {})
    if arrays is None and shapes is None:
      raise ValueError("DetectorLayer needs the fitted `arrays` (or their `shapes`).")
    if arrays is not None:
      arrays = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
      shapes = {k: v.shape for k, v in arrays.items()}
    self.shapes = {k: tuple(int(d) for d in s) for k, s in shapes.items()}
    self._w = {}
    for key, shape in sorted(self.shapes.items()):
      self._w[key] = self.add_weight(
        name=key, shape=shape, initializer="zeros", trainable=False, dtype="float32"
      )
      if arrays is not None:
        self._w[key].assign(arrays[key])
    self.built = True

  def call(self, inputs):
    outputs = {k: keras.ops.cast(v, "float32") for k, v in inputs.items() if _is_float(v)}
    score = _layer_score(self.detector, self.params, self._w, outputs)
    score = keras.ops.cast(score, "float32")
    return {"ood_score": score, "is_ood": keras.ops.greater(score, self._w["threshold"])}

  def compute_output_spec(self, inputs):
    batch = next(iter(inputs.values())).shape[0]
    return {
      "ood_score": keras.KerasTensor((batch,), "float32"),
      "is_ood": keras.KerasTensor((batch,), "bool"),
    }

  def get_config(self):
    return {
      **super().get_config(),
      "detector": self.detector,
      "params": dict(self.params),
      "shapes": {k: list(v) for k, v in self.shapes.items()},
    }


def _is_float(v):
  return "float" in str(getattr(v, "dtype", ""))
