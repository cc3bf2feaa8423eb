"""`url`: URL / Pretrained Visual Uncertainties: uncertainty modules, losses, vMF helpers."""

from keras_unc.methods.url.method import URL

__all__ = ["URL"]
