"""Post-hoc uncertainty fitted after training and served from the SavedModel: calibrators,
split-conformal prediction sets and OOD detectors (`keras_unc.training.calibrate` fits
them on a held-out split; `state` saves and loads them).

Each component class is registered by kind and name (`get("calibrator", "temperature")`)
and bound in gin as `<name>_<kind>` (e.g. `@temperature_calibrator()`, `@aps_conformal()`,
`@energy_detector()`), so `calibrate.conformal = @aps_conformal()` with
`aps_conformal.alpha = 0.05` sets its hyperparameters.
"""

import gin

from keras_unc.posthoc import calibrators, conformal, detectors  # noqa: F401  (registers)
from keras_unc.posthoc.base import KINDS, REGISTRY, Component, FitData, get, register


def names(kind):
  """The registered names of one kind."""
  return sorted(REGISTRY[kind])


for _kind in KINDS:
  for _name, _cls in REGISTRY[_kind].items():
    gin.external_configurable(_cls, name=f"{_name}_{_kind}")

__all__ = ["KINDS", "Component", "FitData", "get", "names", "register"]
