"""Backbones: ViT, ResNet v1.5, Wide ResNet, BiT ResNet-v2 and a residual MLP, with layer
factories for methods.
"""

from keras_unc.backbones.bit import bit_resnet
from keras_unc.backbones.factories import default_conv, default_dense
from keras_unc.backbones.mlp import mlp
from keras_unc.backbones.resnet import resnet
from keras_unc.backbones.vit import VIT_VARIANTS, vit
from keras_unc.backbones.wide_resnet import wide_resnet

__all__ = [
  "vit",
  "resnet",
  "wide_resnet",
  "bit_resnet",
  "mlp",
  "default_dense",
  "default_conv",
  "VIT_VARIANTS",
]
