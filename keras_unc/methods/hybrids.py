"""Hybrids: Plex, HetSNGP and BE-SNGP, new compositions of the same heads and modifiers.

References: Tran et al., "Plex: Towards Reliability using Pretrained Large Model
Extensions", 2022; Fortuin et al., "Deep Classifiers with Label Noise Modeling and Distance
Awareness", TMLR 2022 (HetSNGP); Liu et al. 2020 (SNGP, with BatchEnsemble in ub).
"""

import gin

from keras_unc.methods import heads, modifiers
from keras_unc.methods.base import Method
from keras_unc.methods.registry import register


@register("plex")
@gin.configurable
class Plex(Method):
  """ViT-Plex: BatchEnsemble MLPs in the last ViT blocks + a heteroscedastic head.

  The heteroscedastic head is shared by the members and sees each member's embedding,
  so logits keep the member axis `[B, M, C]`.

  Args:
    het_head: the output layer (default `heads.Heteroscedastic()`, gin `het_head`).
    ensemble: the BatchEnsemble modifier (default `modifiers.Ensemble()`, gin `ensemble`).
    uncertainty, label_smoothing: as `Method`.
  """

  def __init__(
    self,
    het_head: heads.Heteroscedastic | None = None,
    ensemble: modifiers.Ensemble | None = None,
    uncertainty: str = "msp",
    label_smoothing: float = 0.0,
  ):
    super().__init__(
      het_head or heads.Heteroscedastic(),
      [ensemble or modifiers.Ensemble()],
      uncertainty=uncertainty,
      label_smoothing=label_smoothing,
    )


@register("hetsngp")
@gin.configurable
class HetSNGP(Method):
  """Spectral-normalised backbone + GP mean logits + heteroscedastic noise around them.

  Args:
    gp_head, het_head, spectral_norm: the parts (defaults: their classes' defaults, gin
      `gp_head`, `het_head`, `spectral_norm`).
    inference: "edward2" (edward2's `HeteroscedasticSNGPLayer`, as ub: GP logits as the
      location, GP variance added to the noise at test time) or "mean_field" (see
      `heads.HetGP`).
    sngp_var_weight, het_var_weight: edward2's weights of the GP and noise variances.
    uncertainty, label_smoothing: as `Method`.
  """

  def __init__(
    self,
    gp_head: heads.GaussianProcess | None = None,
    het_head: heads.Heteroscedastic | None = None,
    spectral_norm: modifiers.SpectralNorm | None = None,
    inference: str = "edward2",
    sngp_var_weight: float = 1.0,
    het_var_weight: float = 1.0,
    uncertainty: str = "msp",
    label_smoothing: float = 0.0,
  ):
    head = heads.HetGP(
      gp_head or heads.GaussianProcess(),
      het_head or heads.Heteroscedastic(),
      inference=inference,
      sngp_var_weight=sngp_var_weight,
      het_var_weight=het_var_weight,
    )
    super().__init__(
      head,
      [spectral_norm or modifiers.SpectralNorm()],
      uncertainty=uncertainty,
      label_smoothing=label_smoothing,
    )


@register("be_sngp")
@gin.configurable
class BESNGP(Method):
  """BatchEnsemble + spectral normalisation in the backbone, a GP head per member (shared
  weights, each member's features).

  Args:
    gp_head, ensemble, spectral_norm: the parts (defaults: their classes' defaults, gin
      `gp_head`, `ensemble`, `spectral_norm`).
    uncertainty, label_smoothing: as `Method`.
  """

  def __init__(
    self,
    gp_head: heads.GaussianProcess | None = None,
    ensemble: modifiers.Ensemble | None = None,
    spectral_norm: modifiers.SpectralNorm | None = None,
    uncertainty: str = "msp",
    label_smoothing: float = 0.0,
  ):
    super().__init__(
      gp_head or heads.GaussianProcess(),
      [ensemble or modifiers.Ensemble(), spectral_norm or modifiers.SpectralNorm()],
      uncertainty=uncertainty,
      label_smoothing=label_smoothing,
    )
