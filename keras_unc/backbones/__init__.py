"""Backbones: ViT, ResNet v1.5, Wide ResNet and BiT ResNet-v2, with layer factories for methods."""

from keras_unc.backbones.bit import bit_resnet
from keras_unc.backbones.factories import default_conv, default_dense
from keras_unc.backbones.resnet import resnet
from keras_unc.backbones.vit import VIT_VARIANTS, vit
from keras_unc.backbones.wide_resnet import wide_resnet

__all__ = [
  "vit",
  "resnet",
  "wide_resnet",
  "bit_resnet",
  "default_dense",
  "default_conv",
  "VIT_VARIANTS",
]
