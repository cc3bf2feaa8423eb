"""`hetxl`: heteroscedastic noise with its covariance in the embedding space.

Reference: Collier et al., "Massively Scaling Heteroscedastic Classifiers", ICLR 2023.
"""

import gin

from keras_unc.methods import heads
from keras_unc.methods.base import Method
from keras_unc.methods.registry import register


@register("hetxl")
@gin.configurable
class HetXL(Method):
  """HET-XL head: the parameter count does not grow with the number of classes.

  Args:
    het_head: the output layer (default `heads.Heteroscedastic(xl=True)`, gin `het_head`).
    uncertainty, label_smoothing: as `Method`.
  """

  def __init__(
    self,
    het_head: heads.Heteroscedastic | None = None,
    uncertainty: str = "msp",
    label_smoothing: float = 0.0,
  ):
    super().__init__(
      het_head or heads.Heteroscedastic(xl=True),
      uncertainty=uncertainty,
      label_smoothing=label_smoothing,
    )
