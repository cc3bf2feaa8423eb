"""Uncertainty methods, each a composition of backbone modifiers, a head and a loss."""

from keras_unc.methods.base import Method
from keras_unc.methods.deterministic import Deterministic
from keras_unc.methods.ensembles import BatchEnsemble, MCDropout, ShallowEnsemble
from keras_unc.methods.registry import METHODS, get_method, register
from keras_unc.methods.sngp import BESNGP, SNGP, HetSNGP, HetXL, Heteroscedastic, Plex
from keras_unc.methods.url import URL
