"""What a post-hoc component is: fitted after training on held-out outputs, exported inside.

A component (calibrator, conformal predictor, OOD detector) is a plain Python object with

- hyperparameters as keyword arguments of `__init__` (bound by gin) and `get_config()`
  returning them as a JSON-able dict (`cls(**config)` rebuilds the unfitted component);
- `fit(data)` on a `FitData` (the held-out calibration split's network outputs and labels,
  and where a component needs them, in-distribution training outputs and the network's last
  linear layer);
- `state()` -> `{name: np.ndarray}`: everything fitted (scalars as 0-d arrays), and
  `load_state(arrays)` setting it back. State files are `.npz` read with
  `allow_pickle=False` plus JSON: loading a post-hoc state never runs code;
- `apply(outputs)` -> dict of the NumPy arrays it adds or replaces in the output dict
  (`outputs` holds `logits [N, M, C]`, `probs [N, C]`, `uncertainty [N]`, `embedding [N, D]`
  and the keys earlier components added);
- `layer()` -> a Keras layer computing the same as `apply` with `keras.ops` on a dict of
  tensors (its fitted state as non-trainable weights or constants), so the SavedModel serves
  it. `apply` and the layer agree to 1e-5 (a test per component).

Components are registered by name per kind in `REGISTRY` (`"calibrator"`, `"conformal"`,
`"detector"`), so a saved state names its class by key, never by import path.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from keras_unc.metrics import validation

KINDS = ("calibrator", "conformal", "detector")
REGISTRY: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}


def register(kind: str, name: str):
  """Class decorator: `@register("calibrator", "temperature")`."""
  if kind not in KINDS:
    raise ValueError(f"Unknown post-hoc kind {kind!r}: choose one of {KINDS}.")

  def wrap(cls):
    cls.kind, cls.name = kind, name
    REGISTRY[kind][name] = cls
    return cls

  return wrap


def get(kind: str, name: str) -> type:
  """The registered class of `name` (clear error listing the choices)."""
  if kind not in KINDS:
    raise ValueError(f"Unknown post-hoc kind {kind!r}: choose one of {KINDS}.")
  if name not in REGISTRY[kind]:
    raise ValueError(f"Unknown {kind} {name!r}: choose one of {', '.join(sorted(REGISTRY[kind]))}.")
  return REGISTRY[kind][name]


@dataclasses.dataclass
class FitData:
  """What components fit on.

  Attributes:
    outputs: network outputs of the held-out calibration split (NumPy, the output dict).
    labels: its integer labels `[N]`.
    train_outputs: outputs of in-distribution training data (detectors that fit class
      statistics or an embedding bank: Mahalanobis, kNN, ViM, ReAct), or None.
    train_labels: their integer labels, or None.
    linear_head: `(W [D, C], b [C])` of the network's last linear layer when its logits are
      `embedding @ W + b` (ViM and ReAct need it), else None.
  """

  outputs: dict[str, np.ndarray]
  labels: np.ndarray
  train_outputs: dict[str, np.ndarray] | None = None
  train_labels: np.ndarray | None = None
  linear_head: tuple[np.ndarray, np.ndarray] | None = None


class Component:
  """Base class of calibrators, conformal predictors and detectors (see module doc)."""

  kind = "component"
  name = "component"

  def get_config(self) -> dict[str, Any]:
    raise NotImplementedError

  def fit(self, data: FitData) -> Component:
    raise NotImplementedError

  def state(self) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def load_state(self, arrays: dict[str, np.ndarray]) -> Component:
    raise NotImplementedError

  def apply(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def layer(self):
    raise NotImplementedError

  @property
  def fitted(self) -> bool:
    return getattr(self, "_fitted", False)

  def _check_fitted(self):
    if not self.fitted:
      raise ValueError(
        f"The {self.kind} {self.name!r} is not fitted: call fit(FitData(...)) or "
        "load_state(...) first (python -m keras_unc calibrate fits and saves it)."
      )


def probs_of(outputs, num_classes=None, where="outputs"):
  """The validated predictive `probs [N, C]` of an output dict; with `num_classes`, refuses
  outputs of a model with another class count than the component was fitted on.
  """
  if "probs" not in outputs:
    raise ValueError(
      f"{where} has no 'probs' (keys: {sorted(outputs)}): post-hoc components read the "
      "predictive probs [N, C] of the output dict."
    )
  probs = validation.check_probs(outputs["probs"], name=f"{where}['probs']")
  if num_classes is not None and probs.shape[1] != num_classes:
    raise ValueError(
      f"{where}['probs'] has {probs.shape[1]} classes but the component was fitted on "
      f"{num_classes}: fit it on outputs of this model."
    )
  return probs
