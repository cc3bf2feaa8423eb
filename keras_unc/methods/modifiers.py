"""Backbone modifiers: they wrap the backbone's layer factories (see
`keras_unc.backbones.factories`), so a backbone never knows which method it serves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gin
import keras

from keras_unc.backbones.factories import default_batchnorm
from keras_unc.layers.batch_ensemble import (
  BatchNormBatchEnsemble,
  Conv2DBatchEnsemble,
  DenseBatchEnsemble,
)
from keras_unc.layers.spectral_norm import SpectralNormalization


class Modifier:
  """Identity modifier; subclasses override what they change."""

  members = 1

  def wrap_dense(
    self, factory: Callable[..., keras.layers.Layer]
  ) -> Callable[..., keras.layers.Layer]:
    return factory

  def wrap_conv(
    self, factory: Callable[..., keras.layers.Layer]
  ) -> Callable[..., keras.layers.Layer]:
    return factory

  def backbone_kwargs(self) -> dict[str, Any]:
    return {}


@gin.configurable("ensemble")
class Ensemble(Modifier):
  """BatchEnsemble layers (rank-1 fast weights per member) in chosen backbone blocks.

  The batch is tiled M times once, before the first block with BatchEnsemble layers.

  Args:
    ensemble_size: M >= 1.
    blocks: None for every layer of the backbone, or the blocks that get BatchEnsemble
      layers: ViT block indices (e.g. `(10, 11)`) or ResNet block names
      (`"stage4_block2"`), listed in network order.
    mlp_only: in ViT blocks, only the MLP layers (Plex) rather than attention too.
    fast_weight_init: "random_sign", "normal" or "ones"; `fast_weight_stddev` for "normal".
    use_ensemble_bn: one BatchNorm per member (`BatchNormBatchEnsemble`: own statistics,
      scale and offset over the member's rows of the tiled batch) in the chosen blocks,
      instead of one shared by all members: uncertainty-baselines' `use_ensemble_bn`
      (edward2 `EnsembleSyncBatchNorm`; default False in `batchensemble.py`, True in
      `sngp_batchensemble.py`). Needs a backbone with BatchNorm (`resnet`, `wide_resnet`).
  """

  def __init__(
    self,
    ensemble_size: int = 4,
    blocks: Sequence[int | str] | None = None,
    mlp_only: bool = True,
    fast_weight_init: str = "normal",
    fast_weight_stddev: float = 0.5,
    use_ensemble_bn: bool = False,
  ):
    if not isinstance(use_ensemble_bn, bool):
      raise ValueError(f"use_ensemble_bn must be True or False, got {use_ensemble_bn!r}.")
    if int(ensemble_size) < 1:
      raise ValueError(
        f"ensemble_size must be >= 1, got {ensemble_size}: use 1 for a "
        "single model or e.g. 4 for a 4-member BatchEnsemble."
      )
    self.members = int(ensemble_size)
    self.blocks = None if blocks is None else tuple(blocks)
    self.mlp_only = mlp_only
    self.use_ensemble_bn = use_ensemble_bn
    self.fast = dict(
      alpha_initializer=fast_weight_init,
      gamma_initializer=fast_weight_init,
      fast_weight_stddev=fast_weight_stddev,
    )

  def _chosen(self, name, block):
    if self.blocks is None:
      return True
    if block not in self.blocks:
      return False
    return not (self.mlp_only and isinstance(block, int) and "_mlp_dense_" not in name)

  def wrap_dense(self, factory):
    def dense(units, *, name, block=None, **kwargs):
      if not self._chosen(name, block):
        return factory(units, name=name, block=block, **kwargs)
      return DenseBatchEnsemble(units, self.members, name=name, **self.fast, **kwargs)

    return dense

  def wrap_conv(self, factory):
    def conv(filters, kernel_size, *, name, block=None, **kwargs):
      if not self._chosen(name, block):
        return factory(filters, kernel_size, name=name, block=block, **kwargs)
      return Conv2DBatchEnsemble(
        filters, kernel_size, self.members, name=name, **self.fast, **kwargs
      )

    return conv

  def batchnorm_factory(self, *, name, block=None, **kwargs):
    """Per-member BatchNorm in the chosen blocks, the shared one elsewhere."""
    if not self._chosen(name, block):
      return default_batchnorm(name=name, block=block, **kwargs)
    return BatchNormBatchEnsemble(self.members, name=name, **kwargs)

  def backbone_kwargs(self):
    kwargs = {
      "tile_members": self.members,
      "tile_before_block": None if self.blocks is None else self.blocks[0],
    }
    if self.use_ensemble_bn:
      kwargs["batchnorm_factory"] = self.batchnorm_factory
    return kwargs


@gin.configurable("spectral_norm")
class SpectralNorm(Modifier):
  """Spectral normalisation (`W * min(1, c / sigma)`) of the backbone's Dense/Conv layers.

  Args:
    norm_bound: c > 0.
    power_iterations: power-iteration steps per training call.
    dense, conv: which layer kinds to normalise.
  """

  def __init__(
    self, norm_bound: float = 6.0, power_iterations: int = 1, dense: bool = True, conv: bool = True
  ):
    if not norm_bound > 0:
      raise ValueError(
        f"Spectral-norm bound must be > 0, got {norm_bound}: typical values "
        "are 0.95 to 6 (uncertainty-baselines uses 6 for ResNet-50)."
      )
    self.norm_bound, self.power_iterations = float(norm_bound), int(power_iterations)
    self.dense, self.conv = dense, conv

  def _wrap(self, layer, name):
    return SpectralNormalization(
      layer, norm_bound=self.norm_bound, power_iterations=self.power_iterations, name=f"{name}_sn"
    )

  def wrap_dense(self, factory):
    if not self.dense:
      return factory

    def dense(units, *, name, block=None, **kwargs):
      return self._wrap(factory(units, name=name, block=block, **kwargs), name)

    return dense

  def wrap_conv(self, factory):
    if not self.conv:
      return factory

    def conv(filters, kernel_size, *, name, block=None, **kwargs):
      return self._wrap(factory(filters, kernel_size, name=name, block=block, **kwargs), name)

    return conv


@gin.configurable("mc_dropout_backbone")
class MCDropoutBackbone(Modifier):
  """Monte Carlo dropout inside the backbone: S samples from a batch tiled S times.

  The backbone's always-on dropout (`dropout_rate`, `filterwise_dropout` of `resnet` and
  `wide_resnet`) draws a new mask per row, so tiling the images S times before the stem
  (`TileMembers(S, train_members=1)`, the BatchEnsemble tiling) gives S forward samples in
  one pass at inference, `[S*B, D]` with sample i in rows `[i*B, (i+1)*B)`; training runs
  one sample. BatchNorm is unaffected: it uses its moving statistics at inference.

  Args:
    rate: dropout rate in [0, 1) (uncertainty-baselines ImageNet: 0.05).
    num_samples: S forward samples at inference.
    filterwise: drop whole channels (ub `filterwise_dropout`, True on ImageNet).
  """

  def __init__(self, rate: float = 0.1, num_samples: int = 10, filterwise: bool = False):
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
      raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}; e.g. 10.")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate < 1.0:
      raise ValueError(
        f"MC dropout rate must be in (0, 1), got {rate!r}; e.g. 0.05 (uncertainty-baselines)."
      )
    self.members, self.train_members = num_samples, 1
    self.rate, self.filterwise = float(rate), bool(filterwise)

  def backbone_kwargs(self):
    return {
      "tile_members": self.members,
      "tile_train_members": 1,
      "dropout_rate": self.rate,
      "filterwise_dropout": self.filterwise,
    }
