"""`sngp`: spectral-normalised backbone + random-feature Gaussian-process output layer.

Reference: Liu et al., "Simple and Principled Uncertainty Estimation with Deterministic
Deep Learning via Distance Awareness", NeurIPS 2020.
"""

import gin

from keras_unc.methods import heads, modifiers
from keras_unc.methods.base import Method
from keras_unc.methods.registry import register


@register("sngp")
@gin.configurable
class SNGP(Method):
  """Spectral-normalised backbone + random-feature GP head.

  Args:
    gp_head: the GP output layer (default `heads.GaussianProcess()`, gin `gp_head`).
    spectral_norm: the backbone modifier (default `modifiers.SpectralNorm()`, gin
      `spectral_norm`).
    spectral_normalize: normalise the backbone (off = "GP head only", e.g. ViT-SNGP).
    uncertainty, label_smoothing: as `Method`.

  Example:
  ```python
  method = SNGP(gp_head=heads.GaussianProcess(num_inducing=1024, kernel_scale=16.0),
                spectral_norm=modifiers.SpectralNorm(norm_bound=6.0))
  ```
  """

  def __init__(
    self,
    gp_head: heads.GaussianProcess | None = None,
    spectral_norm: modifiers.SpectralNorm | None = None,
    spectral_normalize: bool = True,
    uncertainty: str = "msp",
    label_smoothing: float = 0.0,
  ):
    mods = [spectral_norm or modifiers.SpectralNorm()] if spectral_normalize else []
    super().__init__(
      gp_head or heads.GaussianProcess(),
      mods,
      uncertainty=uncertainty,
      label_smoothing=label_smoothing,
    )
