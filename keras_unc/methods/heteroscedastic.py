"""`heteroscedastic`: input-dependent Gaussian noise on the logits, Monte Carlo softmax.

Reference: Collier et al., "Correlated Input-Dependent Label Noise in Large-Scale Image
Classification", CVPR 2021.
"""

import gin

from keras_unc.methods import heads
from keras_unc.methods.base import Method
from keras_unc.methods.registry import register


@register("heteroscedastic")
@gin.configurable
class Heteroscedastic(Method):
  """Heteroscedastic (`MCSoftmaxDenseFA`, or the sigmoid variant) head.

  Args:
    het_head: the output layer (default `heads.Heteroscedastic()`, gin `het_head`).
    multilabel: sigmoid likelihood over multi-hot labels (JFT / ImageNet-21k upstream).
    uncertainty, label_smoothing: as `Method`.
  """

  def __init__(
    self,
    het_head: heads.Heteroscedastic | None = None,
    multilabel: bool = False,
    uncertainty: str = "msp",
    label_smoothing: float = 0.0,
  ):
    super().__init__(
      het_head or heads.Heteroscedastic(multilabel=multilabel),
      loss="sigmoid" if multilabel else "member_ce",
      uncertainty=uncertainty,
      label_smoothing=label_smoothing,
    )
