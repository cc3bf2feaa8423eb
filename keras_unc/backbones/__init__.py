"""Backbones: ViT and ResNet v1.5, with layer factories for methods."""

from keras_unc.backbones.factories import default_conv, default_dense
from keras_unc.backbones.resnet import resnet
from keras_unc.backbones.vit import VIT_VARIANTS, vit

__all__ = ["vit", "resnet", "default_dense", "default_conv", "VIT_VARIANTS"]
