"""`mc_dropout`: dropout kept on at inference before the output layer, S samples averaged.

Reference: Gal & Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016.
"""

import gin

from keras_unc.methods import heads
from keras_unc.methods.base import Method
from keras_unc.methods.registry import register


@register("mc_dropout")
@gin.configurable
class MCDropout(Method):
  """Dropout active at inference before the output layer; S samples averaged.

  Args:
    rate: dropout rate.
    num_samples: S forward samples at inference (1 in training).
    uncertainty, label_smoothing: as `Method`.
  """

  def __init__(
    self,
    rate: float = 0.1,
    num_samples: int = 10,
    uncertainty: str = "msp",
    label_smoothing: float = 0.0,
  ):
    super().__init__(
      heads.MCDropoutHead(rate, num_samples),
      uncertainty=uncertainty,
      label_smoothing=label_smoothing,
    )
