"""`packed`: Packed-Ensembles, M subnetworks as grouped layers of alpha-times width.

Reference: Laurent et al., "Packed-Ensembles for Efficient Uncertainty Estimation", ICLR 2023
(torch-uncertainty `layers/packed.py`, `models/classification/resnet/packed.py`).
"""

import gin
import keras

from keras_unc.layers.packed import PackedConv2D, PackedDense, check_packed
from keras_unc.methods.base import Method
from keras_unc.methods.heads import Head
from keras_unc.methods.modifiers import Modifier
from keras_unc.methods.registry import register

SUPPORTED = "resnet, wide_resnet or mlp"
# The layers that see the ungrouped input: the stems of resnet / wide_resnet and of mlp.
FIRST_LAYERS = ("stem_conv", "input_dense")


@gin.configurable("packed_ensemble")
class PackedEnsemble(Modifier):
  """Every convolution (and MLP dense layer) of the backbone becomes a packed layer.

  The backbone's first layer (`stem_conv`, the mlp's `input_dense`) sees the ungrouped
  input (`first=True`, one group, `alpha * width` outputs); every later one has `M * gamma`
  groups, except the first convolution of each residual block (`*_conv1`), which has M
  groups (gamma 1), as torch-uncertainty's packed ResNet ("no subgroups for the first
  layer"). BatchNorm and
  pooling act per channel, so they never mix members; the shortcut choice uses
  `width_factor = alpha`. Supported backbones: resnet, wide_resnet (convolutions) and mlp
  (dense layers); others (ViT: LayerNorm and attention mix channels) raise a ValueError.

  Args:
    num_estimators: M (paper: 4).
    alpha: width multiplier (paper: 2).
    gamma: groups per member (paper: 1).
  """

  def __init__(self, num_estimators: int = 4, alpha: float = 2, gamma: int = 1):
    check_packed(alpha, num_estimators, gamma)
    self.num_estimators, self.alpha, self.gamma = num_estimators, alpha, gamma

  def _args(self, name):
    gamma = 1 if name.endswith("_conv1") else self.gamma
    first = name in FIRST_LAYERS
    return dict(alpha=self.alpha, num_estimators=self.num_estimators, gamma=gamma, first=first)

  def _refuse(self, kind, name):
    raise ValueError(
      f"Packed-Ensembles cannot pack the {kind} layer {name!r}: it supports {SUPPORTED} "
      "backbones (a ViT's LayerNorm and attention would mix the members' channels). Use "
      "build_network.backbone = @resnet (or @wide_resnet, @mlp)."
    )

  def wrap_conv(self, factory):
    def conv(filters, kernel_size, *, name, block=None, **kwargs):
      if name != "stem_conv" and not name.startswith("stage"):
        self._refuse("convolution", name)
      return PackedConv2D(filters, kernel_size, name=name, **self._args(name), **kwargs)

    conv.width_factor = self.alpha
    return conv

  def wrap_dense(self, factory):
    def dense(units, *, name, block=None, **kwargs):
      if name != "input_dense" and not (name.startswith("block") and "_mlp_dense_" in name):
        self._refuse("dense", name)
      return PackedDense(units, name=name, **self._args(name), **kwargs)

    return dense


class PackedHead(Head):
  """torch-uncertainty's last `PackedLinear` (`last=True`): M groups of the `alpha * D`
  embedding, member m's `C` logits from its own channel group only, `[B, M, C]`.
  """

  def __init__(self, num_estimators, alpha):
    self.num_estimators, self.alpha = num_estimators, alpha

  def __call__(self, embedding, num_classes, members):
    del members  # No tiled batch: the members are channel groups.
    m = self.num_estimators
    flat = PackedDense(
      num_classes, alpha=self.alpha, num_estimators=m, last=True, name="head", dtype="float32"
    )(embedding)
    return keras.layers.Reshape((m, num_classes), name="logits", dtype="float32")(flat), {}


@register("packed")
@gin.configurable
class Packed(Method):
  """Packed-Ensembles: the backbone's layers as grouped layers (`PackedEnsemble`) and a packed
  head; the M members are channel groups of one network, run in one forward pass.

  Each member is trained on its own cross-entropy (torch-uncertainty repeats the targets M
  times over the `(m b)` rows: the mean of the members' CE, `member_ce`); `probs` is the
  member mean. With alpha=2, M=4, gamma=1 every grouped layer costs `alpha^2 / M = 1` times
  the single model's (the stem, ungrouped, costs alpha times).

  BatchNorm is the backbone's own: per channel, hence per member, as torch-uncertainty's
  `nn.BatchNorm2d(planes * alpha)`. Deviations from torch-uncertainty: see
  `keras_unc.layers.packed` (widths that do not divide are an error, not rounded up; gamma
  is never lowered; the head reshapes to `[B, M, C]` instead of moving members into the
  batch); no dropout option (its packed ResNet's default rate is 0).

  Args:
    num_estimators: M (paper: 4).
    alpha: width multiplier (paper: 2).
    gamma: groups per member (paper: 1).
    uncertainty, label_smoothing: as `Method`.
  """

  def __init__(
    self,
    num_estimators: int = 4,
    alpha: float = 2,
    gamma: int = 1,
    uncertainty: str = "msp",
    label_smoothing: float = 0.0,
  ):
    super().__init__(
      PackedHead(num_estimators, alpha),
      [PackedEnsemble(num_estimators, alpha, gamma)],
      loss="member_ce",
      uncertainty=uncertainty,
      label_smoothing=label_smoothing,
    )
