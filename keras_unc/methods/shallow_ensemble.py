"""`shallow_ensemble`: M linear heads on one shared backbone.

Reference: Lee et al., "Why M Heads are Better than One: Training a Diverse Ensemble of
Deep Networks", 2015.
"""

import gin

from keras_unc.methods import heads
from keras_unc.methods.base import Method
from keras_unc.methods.registry import register


@register("shallow_ensemble")
@gin.configurable
class ShallowEnsemble(Method):
  """M linear heads on one shared backbone; each head trained on its own CE.

  Args:
    num_heads: M.
    loss: "member_ce" or "ensemble_nll".
    uncertainty, label_smoothing: as `Method`.
  """

  def __init__(
    self,
    num_heads: int = 4,
    loss: str = "member_ce",
    uncertainty: str = "msp",
    label_smoothing: float = 0.0,
  ):
    super().__init__(
      heads.ShallowEnsemble(num_heads),
      loss=loss,
      uncertainty=uncertainty,
      label_smoothing=label_smoothing,
    )
