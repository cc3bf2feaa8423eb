"""Backbone modifiers: they wrap the backbone's layer factories (see
`keras_unc.backbones.factories`), so a backbone never knows which method it serves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gin
import keras

from keras_unc.layers.batch_ensemble import Conv2DBatchEnsemble, DenseBatchEnsemble
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
  """

  def __init__(
    self,
    ensemble_size: int = 4,
    blocks: Sequence[int | str] | None = None,
    mlp_only: bool = True,
    fast_weight_init: str = "normal",
    fast_weight_stddev: float = 0.5,
  ):
    if int(ensemble_size) < 1:
      raise ValueError(
        f"ensemble_size must be >= 1, got {ensemble_size}: use 1 for a "
        "single model or e.g. 4 for a 4-member BatchEnsemble."
      )
    self.members = int(ensemble_size)
    self.blocks = None if blocks is None else tuple(blocks)
    self.mlp_only = mlp_only
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

  def backbone_kwargs(self):
    return {
      "tile_members": self.members,
      "tile_before_block": None if self.blocks is None else self.blocks[0],
    }


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
