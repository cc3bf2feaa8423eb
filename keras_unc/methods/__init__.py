"""Uncertainty methods, each a composition of backbone overrides, a head and a loss."""

from keras_unc.methods.base import Method
from keras_unc.methods.deterministic import Deterministic
