"""`swag`: a deterministic network + SWAG, the Gaussian fitted to the SGD iterates.

Reference: Maddox et al., "A Simple Baseline for Bayesian Uncertainty in Deep Learning",
NeurIPS 2019 (wjmaddox/swa_gaussian `swag/posteriors/swag.py`: `collect_model`,
`sample(scale=0.5, cov=True)`; `swag/utils.py::bn_update`). The state and its math live in
`keras_unc.training.averaging` (the trainer collects, evaluates and exports through it).
"""

from __future__ import annotations

import gin

from keras_unc.methods import heads
from keras_unc.methods.base import Method
from keras_unc.methods.registry import register


@register("swag")
@gin.configurable
class SWAG(Method):
  """Deterministic training; from `swag_start * total_steps` on, every `collect_every` steps the
  trainable weights join the running first and second moments and the K-column deviation
  matrix (`max_num_models` = K, the newest K kept). Evaluation and export use S =
  `num_samples` weight samples `theta = mean + sqrt(scale) (sigma z1 + D^T z2 / sqrt(K - 1))`
  (`scale = 0.5`: the paper's `theta_SWA + sigma z1/sqrt(2) + D z2/sqrt(2(K-1))`), each with
  BatchNorm statistics recomputed on the training split, stacked as the members of one
  network (`logits [B, S, C]`, `probs` their mean): test-time cost is S forwards. The samples
  are drawn with `sample_seed` (recorded in the run's config), so the export holds S fixed
  samples, the same for every evaluation and export of one state. Details and deviations:
  `keras_unc.training.averaging`.

  Args:
    swag_start: fraction of `train.total_steps` after which collection starts, in (0, 1).
    collect_every: steps between collections (None: `(total - start) // K`, so that the last
      K collections span the averaging phase; the paper collects once per epoch).
    max_num_models: K, columns of the deviation matrix (paper: 20), >= 2.
    num_samples: S, weight samples served (paper: 30; default 10 to keep the test-time cost
      at 10 forwards).
    scale: sampling scale (reference: 0.5).
    var_clamp: lower bound of the diagonal variance (reference: 1e-30).
    sample_seed: seed of the S samples.
    bn_update_examples: BatchNorm recomputation uses at most this many training examples
      (None: the whole training split).
    uncertainty, label_smoothing, head_init: as `Deterministic`.

  Example:
  ```python
  keras_unc.train(workdir, method=SWAG(swag_start=0.5, num_samples=30), ...)
  ```
  """

  name = "swag"

  def __init__(
    self,
    swag_start: float = 0.75,
    collect_every: int | None = None,
    max_num_models: int = 20,
    num_samples: int = 10,
    scale: float = 0.5,
    var_clamp: float = 1e-30,
    sample_seed: int = 0,
    bn_update_examples: int | None = None,
    uncertainty: str = "msp",
    label_smoothing: float = 0.0,
    head_init: str = "zeros",
  ):
    if not 0.0 < swag_start < 1.0:
      raise ValueError(
        f"SWAG.swag_start={swag_start} must be in (0, 1): the fraction of train.total_steps "
        "after which the weights are collected (e.g. 0.75)."
      )
    if int(max_num_models) < 2:
      raise ValueError(
        f"SWAG.max_num_models={max_num_models} must be >= 2 (the deviation matrix's K - 1 "
        "divides the low-rank sample; the paper uses 20)."
      )
    if int(num_samples) < 1:
      raise ValueError(f"SWAG.num_samples={num_samples} must be >= 1 (paper: 30).")
    if collect_every is not None and int(collect_every) < 1:
      raise ValueError(f"SWAG.collect_every={collect_every} must be None or >= 1 (steps).")
    if scale <= 0:
      raise ValueError(f"SWAG.scale={scale} must be > 0 (reference: 0.5).")
    super().__init__(
      heads.Linear(head_init), uncertainty=uncertainty, label_smoothing=label_smoothing
    )
    self.averaging = dict(
      kind="swag",
      start=float(swag_start),
      every=None if collect_every is None else int(collect_every),
      max_num_models=int(max_num_models),
      num_samples=int(num_samples),
      scale=float(scale),
      var_clamp=float(var_clamp),
      sample_seed=int(sample_seed),
      bn_update_examples=bn_update_examples,
    )
