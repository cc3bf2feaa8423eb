"""Keras 3 layers of keras_unc: each one file, serializable, written with `keras.ops`."""

from keras_unc.layers.input_adapter import InputAdapter
from keras_unc.layers.outputs import MemberAxis, MemberMean, Predictive, UncertaintyScore

__all__ = ["InputAdapter", "MemberAxis", "MemberMean", "Predictive", "UncertaintyScore"]
