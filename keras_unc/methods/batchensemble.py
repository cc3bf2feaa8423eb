"""`batchensemble`: rank-1 fast weights per member in every layer, one forward pass.

Reference: Wen et al., "BatchEnsemble: An Alternative Approach to Efficient Ensemble and
Lifelong Learning", ICLR 2020.
"""

import gin

from keras_unc.methods import heads, modifiers
from keras_unc.methods.base import Method
from keras_unc.methods.registry import register


@register("batchensemble")
@gin.configurable
class BatchEnsemble(Method):
  """BatchEnsemble backbone (all layers, or chosen blocks) and a BatchEnsemble head.

  Args:
    ensemble_size: M members (uncertainty-baselines ImageNet ResNet-50: 4).
    blocks: None (every layer) or the blocks with BatchEnsemble layers.
    fast_weight_init: "normal" (N(1, stddev): ub's `random_sign_init=-0.5`),
      "random_sign" (±1) or "ones".
    fast_weight_stddev: stddev of the "normal" initialiser.
    loss: "member_ce" (each member trained on its CE, as ub) or "ensemble_nll".
    uncertainty, label_smoothing: as `Method`.
  """

  def __init__(
    self,
    ensemble_size: int = 4,
    blocks=None,
    fast_weight_init: str = "normal",
    fast_weight_stddev: float = 0.5,
    loss: str = "member_ce",
    uncertainty: str = "msp",
    label_smoothing: float = 0.0,
  ):
    fast = dict(fast_weight_init=fast_weight_init, fast_weight_stddev=fast_weight_stddev)
    super().__init__(
      heads.BatchEnsembleLinear(**fast),
      [modifiers.Ensemble(ensemble_size, blocks, **fast)],
      loss=loss,
      uncertainty=uncertainty,
      label_smoothing=label_smoothing,
    )
